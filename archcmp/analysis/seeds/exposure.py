"""Exposure evidence (claim C06): teacher-forced vs free-running per-token accuracy of the same decoder.

The emergence probe already scores every probe example twice from one checkpoint: once from the
model's own greedy answer (``token_accuracy``: each answer token compared with the target, the
model having fed itself its earlier guesses) and once with teacher forcing (``tf_token_accuracy``:
the argmax at each answer position given the *true* earlier answer tokens). Their difference is the
cost of running the model on its own outputs instead of the training-time context. C06's rule
(``seeds/claims.yaml``) reads it paired by seed, per size; this module only reshapes the committed
``metrics.csv`` of the emergence ladder into the claims engine's per-seed table and draws it.

Which runs feed the rule is fixed in the registry (C06 ``amended``): the decoder, the three largest
sizes of the ladder, the final step of each run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.claims.evidence import SEED_COLUMNS, mean_interval

# Fixed before the 3,000-step ladder's results were read (seeds/claims.yaml, C06 amendment).
SOURCE = Path("emergence") / "ladder3000" / "metrics.csv"
ARCH = "decoder"
SIZES = ("nano", "micro", "tiny")
TEACHER_FORCED, FREE_RUNNING = "tf_token_accuracy", "token_accuracy"


def exposure_seed_table(metrics: pd.DataFrame, arch: str = ARCH, sizes=SIZES) -> pd.DataFrame:
    """Rows ``condition=size, group=<arch>/teacher_forced|<arch>/free_running, seed,
    metric=token_accuracy, value`` at each run's last step; a size without runs raises."""
    m = metrics[(metrics["arch"] == arch) & metrics["size"].isin(sizes)]
    missing = sorted(set(sizes) - set(m["size"]))
    if missing:
        raise ValueError(f"exposure: no {arch} runs for sizes {missing} in the emergence metrics")
    m = m[m["step"] == m.groupby("run")["step"].transform("max")]
    rows = []
    for source, group in ((TEACHER_FORCED, "teacher_forced"), (FREE_RUNNING, "free_running")):
        part = m[m["metric"] == source]
        rows.append(pd.DataFrame({"condition": part["size"], "group": f"{arch}/{group}", "seed": part["seed"],
                                  "metric": "token_accuracy", "value": part["mean"]}))
    out = pd.concat(rows, ignore_index=True)
    order = {s: i for i, s in enumerate(sizes)}
    return out.sort_values(["condition", "group", "seed"], key=lambda c: c.map(order) if c.name == "condition"
                           else c).reset_index(drop=True)


def gap_summary(table: pd.DataFrame, sizes=SIZES) -> pd.DataFrame:
    """Per size: mean teacher-forced and free-running accuracy and the paired gap with its 95%
    t-interval over seeds."""
    rows = []
    for size in sizes:
        t = table[table["condition"] == size].pivot(index="seed", columns="group", values="value").dropna()
        tf, fr = t.filter(like="teacher_forced").iloc[:, 0], t.filter(like="free_running").iloc[:, 0]
        gap, lo, hi = mean_interval((tf - fr).to_numpy())
        rows.append({"size": size, "n_seeds": len(t), "teacher_forced": tf.mean(), "free_running": fr.mean(),
                     "gap": gap, "gap_lo": lo, "gap_hi": hi})
    return pd.DataFrame(rows)


def plot_gap(summary: pd.DataFrame, table: pd.DataFrame, path: Path, band: float = 0.02) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    x = np.arange(len(summary))
    for group, marker in (("teacher_forced", "o"), ("free_running", "s")):
        for i, size in enumerate(summary["size"]):
            v = table[(table["condition"] == size) & table["group"].str.endswith(group)]["value"]
            ax1.scatter(np.full(len(v), i + (0.08 if marker == "s" else -0.08)), v, marker=marker, s=18,
                        color="C0" if marker == "o" else "C1", label=group.replace("_", " ") if i == 0 else None)
    ax1.set_xticks(x, summary["size"])
    ax1.set_ylabel("per-token accuracy (each dot a seed)")
    ax1.legend(fontsize=8)
    err = np.vstack([summary["gap"] - summary["gap_lo"], summary["gap_hi"] - summary["gap"]])
    ax2.errorbar(x, summary["gap"], yerr=np.nan_to_num(err), fmt="o", capsize=4)
    ax2.axhspan(-band, band, color="0.85", label=f"C06 band ±{band}")
    ax2.axhline(0, color="0.4", lw=0.8)
    ax2.set_xticks(x, summary["size"])
    ax2.set_ylabel("teacher-forced − free-running")
    ax2.set_title("gap, mean and 95% t-interval over seeds", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def export_exposure(results: Path) -> list[Path]:
    """Write ``exposure/seeds.csv``, ``exposure/gap.csv`` and ``exposure/gap.png`` from the ladder."""
    table = exposure_seed_table(pd.read_csv(results / SOURCE))
    folder = results / "exposure"
    folder.mkdir(parents=True, exist_ok=True)
    seeds = folder / "seeds.csv"
    table[list(SEED_COLUMNS)].to_csv(seeds, index=False, float_format="%.6g")
    summary = gap_summary(table)
    gaps = folder / "gap.csv"
    summary.to_csv(gaps, index=False, float_format="%.6g")
    return [seeds, gaps, plot_gap(summary, table, folder / "gap.png")]
