"""Per-size exact match of every architecture in this folder and the decoder's ladder3000, with
95% t-intervals over seeds, and the C41 contrast (decoder minus encoder, paired by seed).

    python experiments/results/emergence/ladder3000_archs/summarize.py

Writes ``summary.csv``, ``summary.md`` and ``decoder_vs_encoder.png`` next to this file.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from archcmp.claims.evidence import mean_interval  # noqa: E402

HERE = Path(__file__).resolve().parent
METRICS = ("exact_match", "token_accuracy", "edit_distance", "target_loglik")


def final_rows() -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in [HERE.parent / "ladder3000" / "metrics.csv", *sorted(HERE.glob("*/metrics.csv"))]]
    m = pd.concat(frames, ignore_index=True)
    return m[(m["step"] == m.groupby("run")["step"].transform("max")) & m["metric"].isin(METRICS)]


def summary(m: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (arch, params, size, metric), g in m.groupby(["arch", "params", "size", "metric"]):
        g = g.sort_values("seed")
        mean, lo, hi = mean_interval(g["mean"].to_numpy(), 0.95, "t")
        rows.append({"arch": arch, "size": size, "params": params, "metric": metric, "n_seeds": len(g),
                     "per_seed": " / ".join(f"{v:.3f}" for v in g["mean"]), "mean": mean, "lo": lo, "hi": hi})
    em = m[m["metric"] == "exact_match"].pivot_table(index=["size", "params", "seed"], columns="arch", values="mean")
    if {"decoder", "encoder"} <= set(em.columns):
        for (size, params), g in em.dropna(subset=["decoder", "encoder"]).groupby(level=[0, 1]):
            d = (g["decoder"] - g["encoder"]).to_numpy()
            mean, lo, hi = mean_interval(d, 0.95, "t")
            rows.append({"arch": "decoder-encoder", "size": size, "params": params, "metric": "exact_match",
                         "n_seeds": len(d), "per_seed": " / ".join(f"{v:+.3f}" for v in d),
                         "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows).sort_values(["metric", "arch", "params"])


def plot(s: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    em = s[s["metric"] == "exact_match"]
    for arch, g in em[em["arch"] != "decoder-encoder"].groupby("arch"):
        axes[0].plot(g["params"], g["mean"], marker="o", label=arch)
        axes[0].fill_between(g["params"], g["lo"].clip(-0.05, 1.05), g["hi"].clip(-0.05, 1.05), alpha=0.2)
    axes[0].set(xscale="log", xlabel="parameters", ylabel="exact match (probe test split)",
                title="exact match, mean and 95% t-interval over 3 seeds")
    axes[0].legend()
    d = em[em["arch"] == "decoder-encoder"]
    if len(d):
        axes[1].errorbar(d["params"], d["mean"], yerr=[d["mean"] - d["lo"], d["hi"] - d["mean"]], marker="o", capsize=3)
        axes[1].axhline(0, color="grey", lw=0.8)
        axes[1].set(xscale="log", xlabel="parameters", ylabel="decoder - encoder exact match",
                    title="C41: paired by seed, 95% t-interval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    s = summary(final_rows())
    s.to_csv(HERE / "summary.csv", index=False, float_format="%.4f")
    lines = ["| arch | size | params | metric | per seed 0 / 1 / 2 | mean [95% t-interval over seeds] |", "|---|---|---|---|---|---|"]
    for r in s.itertuples():
        lines.append(f"| {r.arch} | {r.size} | {r.params:,} | {r.metric} | {r.per_seed} | {r.mean:.3f} [{r.lo:.3f}, {r.hi:.3f}] |")
    (HERE / "summary.md").write_text("\n".join(lines) + "\n")
    plot(s, HERE / "decoder_vs_encoder.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
