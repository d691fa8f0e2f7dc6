"""Summary of experiments/results/rank_pretrained: mean effective-rank fraction of self-attention per
model (trained / pretrained step and initialisation), per layer, with seed intervals for our runs.

Run after experiments/rank_pretrained.sh:  python experiments/rank_pretrained_summary.py
Writes summary.md and effective_rank_fraction_by_layer.png next to metrics.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "results" / "rank_pretrained"


def main(out: Path = OUT) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(out / "metrics.csv.gz" if (out / "metrics.csv.gz").exists() else out / "metrics.csv")
    df = df[df["kind"] == "self"]
    final = df.groupby("run")["step"].transform("max")
    df = df.assign(when=np.where(df["step"] == final, "trained", "init"),
                   model=np.where(df["run"].str.contains("-s\\d+$"), df["arch"] + " (ours, nano)", df["run"]))
    per_run = df.groupby(["model", "run", "when"])[["effective_rank_frac", "n"]].mean().reset_index()
    lines = ["| model | seeds | mean block size n | effective-rank fraction, init | trained / pretrained |",
             "|---|---|---|---|---|"]
    for model, g in per_run.groupby("model"):
        cells = []
        for when in ("init", "trained"):
            v = g.loc[g["when"] == when, "effective_rank_frac"].to_numpy()
            cells.append(f"{v.mean():.3f}" + (f" [{v.min():.3f}, {v.max():.3f}]" if len(v) > 1 else ""))
        lines.append(f"| {model} | {g['run'].nunique()} | {g['n'].mean():.1f} | {cells[0]} | {cells[1]} |")
    by_layer = df[df["when"] == "trained"].groupby(["model", "run", "layer"])["effective_rank_frac"].mean().reset_index()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (model, g) in enumerate(by_layer.groupby("model")):
        s = g.groupby("layer")["effective_rank_frac"]
        ax.errorbar(s.mean().index + 1, s.mean(), yerr=[s.mean() - s.min(), s.max() - s.mean()], marker="o",
                    capsize=3, color=f"C{i}", label=model)
    ax.set_xlabel("layer")
    ax.set_ylabel("effective rank / n")
    ax.set_title("self-attention, same 32 texts (bars: min-max over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "effective_rank_fraction_by_layer.png", dpi=120)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
