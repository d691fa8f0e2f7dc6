"""The emergence experiment's success criterion (issue 17), judged from the probe's outputs.

1. Prerequisite: the ladder spans failure to success -- mean exact match over seeds <= ``smallest_max``
   at the smallest size and >= ``largest_min`` at the largest.
2. Schaeffer et al. (2023): on the same outputs exact match is sharper across sizes than each
   smooth metric -- the paired seed-bootstrap 95% interval of |B(exact match)| - |B(m)| lies above 0
   for m = per-token accuracy, token edit distance and target log-likelihood (B = breakthroughness).

``met`` is true only when both hold (for every architecture present), None when the sweep cannot
decide (fewer than three sizes). When the prerequisite fails for any architecture, part 2 is not
judged: ``prerequisite_met`` is false, ``met`` false and ``status`` says so (the claims engine reads
this as inconclusive, not as evidence against Schaeffer et al.).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from archcmp.analysis.emergence.metrics import last_step

SMOOTH_FOR_CRITERION = ("token_accuracy", "edit_distance", "target_loglik")


def prerequisite_text(smallest_max: float, largest_min: float) -> str:
    return (f"mean exact match over seeds <= {smallest_max:g} at the smallest size and >= {largest_min:g} "
            "at the largest")


def criterion_text(smallest_max: float, largest_min: float) -> str:
    return (f"prerequisite: {prerequisite_text(smallest_max, largest_min)}; Schaeffer et al. 2023: the paired seed-bootstrap 95% interval of "
            "|B(exact match)| - |B(m)| is above 0 for m = per-token accuracy, token edit distance and target "
            "log-likelihood (B = breakthroughness across sizes)")


def _r(v, nd=4):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def judge(long_df: pd.DataFrame, seed_smooth: pd.DataFrame, smallest_max: float = 0.10,
          largest_min: float = 0.90, incomplete: list[str] | tuple = ()) -> dict:
    """``criterion.json`` content from the long metric frame and ``breakdown.seed_smoothness``.

    ``incomplete``: names of runs whose training has not finished; with any, ``met`` is None and
    ``status`` says which (the numbers are still reported). An undecidable verdict (fewer than three
    sizes) also carries a ``status``, as the claims registry expects of ``met = null``.
    """
    final = last_step(long_df[long_df["metric"] == "exact_match"], ("arch", "params", "seed"))
    per_arch, verdicts, n_seeds = {}, [], []
    for arch, g in final.groupby("arch", sort=True):
        sizes = g.groupby(["params", "size"], sort=True)["mean"]
        table = [{"size": size, "params": int(p), "exact_match_mean": _r(v.mean()),
                  "exact_match_per_seed": [_r(x) for x in v]} for (p, size), v in sizes]
        n_seeds.append(int(g.groupby("params")["seed"].nunique().min()))
        small, large = table[0]["exact_match_mean"], table[-1]["exact_match_mean"]
        prereq = small <= smallest_max and large >= largest_min
        s = seed_smooth[seed_smooth["arch"] == arch].set_index("metric")
        smooth = {m: {"B": _r(s.loc[m, "B"]), "B_interval": [_r(s.loc[m, "B_lo"]), _r(s.loc[m, "B_hi"])],
                      "B_per_seed": s.loc[m, "B_seeds"], "R2": _r(s.loc[m, "R2"]),
                      "R2_interval": [_r(s.loc[m, "R2_lo"]), _r(s.loc[m, "R2_hi"])]}
                  for m in ("exact_match", *SMOOTH_FOR_CRITERION) if m in s.index}
        gaps = {m: {"gap": _r(s.loc[m, "gap"]), "interval": [_r(s.loc[m, "gap_lo"]), _r(s.loc[m, "gap_hi"])]}
                for m in SMOOTH_FOR_CRITERION if m in s.index and "gap" in s.columns}
        decidable = len(table) >= 3 and len(gaps) == len(SMOOTH_FOR_CRITERION)
        sharper = decidable and all(v["interval"][0] is not None and v["interval"][0] > 0 for v in gaps.values())
        verdict = (prereq and sharper) if decidable else None
        verdicts.append(verdict)
        per_arch[arch] = {"met": verdict, "prerequisite_met": prereq, "exact_match_sharper": sharper if decidable
                          else None, "smallest_exact_match": small, "largest_exact_match": large,
                          "sizes": table, "smoothness": smooth, "breakthroughness_gap_exact_minus_metric": gaps}
    met = None if any(v is None for v in verdicts) or incomplete else all(verdicts)
    prereq_all = all(a["prerequisite_met"] for a in per_arch.values())
    out = {"criterion": criterion_text(smallest_max, largest_min), "met": met,
           "n_seeds": min(n_seeds) if n_seeds else 0,
           "prerequisite": prerequisite_text(smallest_max, largest_min)}
    if incomplete:
        out["status"] = f"partial: {len(incomplete)} run(s) still training ({', '.join(sorted(incomplete))})"
    elif met is None:
        out["status"] = "undecided: fewer than three sizes per architecture"
    else:
        out["prerequisite_met"] = prereq_all
        if not prereq_all:
            failed = sorted(a for a, v in per_arch.items() if not v["prerequisite_met"])
            out["status"] = f"not judged: prerequisite not met ({', '.join(failed)})"
    return {**out, "per_arch": per_arch}
