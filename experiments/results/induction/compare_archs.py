"""Per-architecture summary of the induction runs: ``archs.csv``, ``archs.md`` and ``archs.png``.

Reads only the files ``archcmp-analyze induction`` wrote into each result directory (``phase.csv``,
``criterion_measured.json``, ``per_step.csv``, ``heads.csv``); nothing is re-scored.

    python experiments/results/induction/compare_archs.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from archcmp.analysis.common.probe_tables import t_interval

HERE = Path(__file__).resolve().parent
# (label, directory, steps): the runs on the pairs layout, seeds 1-3
RUNS = [("decoder", HERE, 2500), ("prefix_lm", HERE / "prefix_lm", 2500),
        ("encdec (2 enc + 2 dec layers)", HERE / "encdec", 2500),
        ("encdec (2 enc + 2 dec layers)", HERE / "encdec_long", 6000)]


def _fmt(values) -> str:
    m, half, n = t_interval(values)
    if n == 0:
        return "not reached"
    if n == 1 or not math.isfinite(half):
        return f"{m:,.0f} (n = {n})"
    return f"{m:,.0f} ({m - half:,.0f}-{m + half:,.0f}){'' if n == 3 else f', n = {n}'}"


def rows() -> list[dict]:
    out = []
    for label, d, steps in RUNS:
        phase = pd.read_csv(d / "phase.csv").sort_values("seed")
        verdict = json.loads((d / "criterion_measured.json").read_text())
        met = sum(bool(r["met"]) for r in verdict["runs"])
        out.append({"arch": label, "steps": steps, "seeds": ",".join(str(s) for s in phase["seed"]),
                    "met_seeds": f"{met}/{len(phase)}",
                    "t90_mean_ci95": _fmt(phase["t90"]) if met else "no phase change by the rule",
                    "t90_per_seed": "/".join(f"{t:.0f}" for t in phase["t90"]),
                    "pm_step_mean_ci95": _fmt(phase["pm_step"]),
                    "max_l2_pm_per_seed": "/".join(f"{x:.2f}" for x in phase["max_pm"]),
                    "final_repeat_loss_per_seed": "/".join(f"{x:.2f}" for x in phase["final_repeat_loss"]),
                    "files": str(d.relative_to(HERE)) + "/" if d != HERE else "./"})
    return out


def plot(out: Path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for i, (label, d, steps) in enumerate(RUNS[:2] + RUNS[3:]):
        ps = pd.read_csv(d / "per_step.csv")
        hs = pd.read_csv(d / "heads.csv")
        best = hs[hs["layer"] == hs["layer"].max()].groupby(["seed", "step"])["prefix_matching"].max().reset_index()
        for j, (seed, g) in enumerate(ps[ps["step"] > 0].groupby("seed")):
            ax1.plot(g["step"], g["repeat_loss"], color=f"C{i}", alpha=0.8, label=label if j == 0 else None)
        for j, (seed, g) in enumerate(best[best["step"] > 0].groupby("seed")):
            ax2.plot(g["step"], g["prefix_matching"], color=f"C{i}", alpha=0.8, label=label if j == 0 else None)
    ax1.axhline(math.log(64), color="k", lw=0.8, ls=":")
    ax1.set_ylabel("repeat loss (nats/token)")
    ax1.set_title("repeat loss, seeds 1-3 (dotted: ln 64)", fontsize=9)
    ax2.axhline(0.5, color="k", lw=0.8, ls=":")
    ax2.set_ylabel("best layer-2 prefix-matching score")
    ax2.set_title("best last-layer prefix matching, seeds 1-3 (dotted: criterion 0.5)", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(out, dpi=120)


def main():
    df = pd.DataFrame(rows())
    df.to_csv(HERE / "archs.csv", index=False)
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    (HERE / "archs.md").write_text("\n".join(lines) + "\n")
    plot(HERE / "archs.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
