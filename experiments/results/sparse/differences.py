"""Paired differences and the learning check of the sparse-attention grid (seed claim C17).

    python experiments/results/sparse/differences.py experiments/results/sparse

Reads ``seeds.csv`` (written by ``archcmp-analyze sweep``) in that folder and writes
``differences.csv`` and ``differences.md``:

* per sequence length, ``local - dense`` and ``strided - dense`` recall accuracy paired by seed,
  their mean and 95% t-interval over seeds, and where the interval lies against the pre-set
  band [-0.02, 0.02] (inside / outside / straddles);
* per length, the learning check set before the grid: dense mean recall accuracy >= 0.8
  (met / not met).

The verdict itself is computed by ``archcmp-claims`` from ``seeds.csv``; this table shows the
same intervals together with the per-seed values and the learning check.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from archcmp.claims.evidence import mean_interval, read_seed_table

METRIC, BASE, SPARSE, MARGIN, LEARNED = "recall_accuracy", "dense", ("local", "strided"), 0.02, 0.8


def where(lo: float, hi: float) -> str:
    """Position of an interval against the band [-MARGIN, MARGIN]."""
    if -MARGIN <= lo and hi <= MARGIN:
        return "inside"
    return "outside" if (lo > MARGIN or hi < -MARGIN) else "straddles"


def differences(seeds: pd.DataFrame) -> pd.DataFrame:
    d = seeds[seeds["metric"] == METRIC]
    wide = d.pivot_table(index=["condition", "seed"], columns="group", values="value")
    rows = []
    for cond, g in wide.groupby(level="condition"):
        base = g[BASE]
        m, lo, hi = mean_interval(base.to_numpy())
        rows.append({"condition": cond, "comparison": f"{BASE} (learning check >= {LEARNED})", "n": len(base),
                     "mean": m, "lo": lo, "hi": hi, "per_seed": " ".join(f"{v:.3f}" for v in base),
                     "result": "met" if m >= LEARNED else "not met"})
        for arm in SPARSE:
            if arm not in g:
                continue
            diff = (g[arm] - base).dropna()
            m, lo, hi = mean_interval(diff.to_numpy())
            rows.append({"condition": cond, "comparison": f"{arm} - {BASE}", "n": len(diff), "mean": m,
                         "lo": lo, "hi": hi, "per_seed": " ".join(f"{v:+.3f}" for v in diff),
                         "result": where(lo, hi)})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| length | comparison | seeds | mean [95% t-interval] | per seed | result |",
             "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        spec = ".4f" if r.comparison.startswith(BASE) else "+.4f"
        lines.append(f"| {r.condition} | {r.comparison} | {r.n} | {r.mean:{spec}} [{r.lo:{spec}}, {r.hi:{spec}}] "
                     f"| {r.per_seed} | {r.result} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1])
        return 2
    out = Path(argv[0])
    table = differences(read_seed_table(out / "seeds.csv"))
    table.to_csv(out / "differences.csv", index=False, float_format="%.6g", lineterminator="\n")
    (out / "differences.md").write_text(markdown(table))
    print(markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
