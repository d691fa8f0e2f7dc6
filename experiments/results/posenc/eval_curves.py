"""Held-out curves of every run under a sweep directory: eval exact match and eval loss vs step.

    python experiments/results/posenc/eval_curves.py SWEEP_DIR OUT_DIR

Each run directory's ``metrics.jsonl`` rows with ``eval_loss`` are collected; the run's group is
its directory name without the trailing ``-s<seed>``. Writes ``eval_curves.csv`` (group, seed,
step, eval_loss, eval_exact_match) and ``eval_curves.png`` (one panel per group, one line per
seed), so one can see whether each arm learned and whether it was still improving at the end.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def collect(sweep: Path) -> pd.DataFrame:
    rows = []
    for f in sorted(sweep.rglob("metrics.jsonl")):
        m = re.fullmatch(r"(.+)-s(\d+)", f.parent.name)
        if not m:
            continue
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if "eval_loss" in rec:
                rows.append({"group": m.group(1), "seed": int(m.group(2)), "step": rec["step"],
                             "eval_loss": rec["eval_loss"], "eval_exact_match": rec.get("eval_exact_match")})
    return pd.DataFrame(rows).drop_duplicates(["group", "seed", "step"], keep="last")


def plot(df: pd.DataFrame, path: Path) -> None:
    groups = sorted(df["group"].unique())
    fig = Figure(figsize=(3.3 * len(groups), 5.2))
    axes = fig.subplots(2, len(groups), squeeze=False)
    for j, g in enumerate(groups):
        for seed, d in df[df["group"] == g].groupby("seed"):
            d = d.sort_values("step")
            axes[0, j].plot(d["step"], d["eval_exact_match"], marker="o", ms=3, label=f"seed {seed}")
            axes[1, j].plot(d["step"], d["eval_loss"], marker="o", ms=3, label=f"seed {seed}")
        axes[0, j].set_title(g, fontsize=8)
        axes[0, j].set_ylim(-0.03, 1.03)
        axes[0, j].set_ylabel("held-out exact match")
        axes[1, j].set_ylabel("held-out loss (nats/token)")
        axes[1, j].set_xlabel("step")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str]) -> None:
    sweep, out = Path(argv[0]), Path(argv[1])
    df = collect(sweep).sort_values(["group", "seed", "step"])
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "eval_curves.csv", index=False, float_format="%.6g")
    plot(df, out / "eval_curves.png")
    print(f"wrote {out / 'eval_curves.csv'} and {out / 'eval_curves.png'} ({len(df)} rows)")


if __name__ == "__main__":
    main(sys.argv[1:])
