"""Combine several ``archcmp-analyze decoding`` output folders (their per_run.csv) into one summary.csv
and frontier.png, and print the paired seed differences the C08 / C31 / C32-part-1 rules read, per
architecture and size. Used for experiments/results/decoding/other_archs (prefix_lm, encdec: reported
beside the decoder, never judged), whose pieces were analysed one run folder at a time as they finished.

    python experiments/decoding_merge.py OUT_DIR PIECE_DIR...
"""
import sys
from pathlib import Path
import pandas as pd
from archcmp.analysis.decoding.cli import summarize, plot_frontier
out = Path(sys.argv[1])
per_run = pd.concat([pd.read_csv(p / "per_run.csv") for p in map(Path, sys.argv[2:])], ignore_index=True)
per_run["variant"] = per_run["variant"].fillna("")  # empty labels read back as NaN
summary = summarize(per_run)
summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
plot_frontier(summary, out / "frontier.png")
for _, r in summary.iterrows():
    if r.setting in ("greedy", "sample_T0.5", "sample_T1", "sample_T1.5"):
        print(f"| {r.arch} | {r['size']} | {r.setting} | {r.distinct_2:.3f} ± {r.distinct_2_ci95:.3f} | {r.rep_4:.3f} ± {r.rep_4_ci95:.3f} | {r.loglik:.2f} ± {r.loglik_ci95:.2f} |")
# the three rules' paired differences, computed the way archcmp-claims does (t-interval over seeds)
from scipy import stats
import numpy as np
for arch in sorted(per_run.arch.unique()):
    for size in sorted(per_run["size"].unique()):
        d = per_run[(per_run.arch == arch) & (per_run["size"] == size)].pivot(index="seed", columns="setting")
        for name, metric, a, b in [("C08", "distinct_2", "sample_T1", "greedy"), ("C31", "distinct_2", "sample_T1.5", "sample_T0.5"),
                                   ("C32p1", "rep_4", "sample_T1", "greedy")]:
            x = d[metric][a] - d[metric][b]
            h = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
            print(f"{arch} {size} {name}: {x.mean():+.3f} [{x.mean()-h:+.3f}, {x.mean()+h:+.3f}]")
