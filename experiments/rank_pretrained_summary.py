"""Summary of experiments/results/rank_pretrained: mean effective-rank fraction of self-attention per
model (trained / pretrained step and initialisation), per layer, with seed intervals for our runs,
and the numbers of the README's decision rules.

Reads metrics.csv(.gz) of the results directory and of its sub-directories (the real causal model is
analysed into ``smollm2/``). Run after experiments/rank_pretrained.sh:
    python experiments/rank_pretrained_summary.py [RESULTS_DIR]
Writes summary.md, effective_rank_fraction_by_layer.png and effective_rank_fraction_by_n.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "results" / "rank_pretrained"
BIDIRECTIONAL = "all-MiniLM-L6-v2"          # the real bidirectional model (rules 1 and 4)
CAUSAL = "SmolLM2-135M-Instruct.Q4_1"       # the real causal model (rule 4)
MIN_TEXTS = 2                               # rule 4b: texts per model at a shared block size n


def read_metrics(out: Path) -> pd.DataFrame:
    """Self-attention rows of every metrics file under ``out`` (a run analysed twice counts once)."""
    frames, seen = [], set()
    for d in [out] + sorted(p for p in out.iterdir() if p.is_dir()):
        path = d / "metrics.csv.gz" if (d / "metrics.csv.gz").exists() else d / "metrics.csv"
        if not path.exists():
            continue
        df = pd.read_csv(path)
        df = df[~df["run"].isin(seen)]
        seen |= set(df["run"])
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df = df[df["kind"] == "self"]
    final = df.groupby("run")["step"].transform("max")
    depth = df["layer"] / df.groupby("run")["layer"].transform("max").clip(lower=1)
    return df.assign(when=np.where(df["step"] == final, "trained", "init"), depth=depth,
                     model=np.where(df["run"].str.contains("-s\\d+$"), df["arch"] + " (ours, nano)", df["run"]))


def rule_lines(df: pd.DataFrame) -> list[str]:
    """Rule 1 (MiniLM vs our trained decoders) and rule 4 (MiniLM vs the real causal model)."""
    trained = df[df["when"] == "trained"]
    mean = trained.groupby("run")["effective_rank_frac"].mean()
    lines = []
    decoders = mean[[r for r in mean.index if r.startswith("decoder-")]]
    if BIDIRECTIONAL in mean and len(decoders):
        met = mean[BIDIRECTIONAL] < decoders.min()
        lines.append(f"- Rule 1: {BIDIRECTIONAL} {mean[BIDIRECTIONAL]:.3f} vs lowest trained decoder "
                     f"{decoders.min():.3f} -> {'met' if met else 'not met'}")
    if BIDIRECTIONAL in mean and CAUSAL in mean:
        a = mean[CAUSAL] > mean[BIDIRECTIONAL]
        lines.append(f"- Rule 4a: {CAUSAL} {mean[CAUSAL]:.3f} vs {BIDIRECTIONAL} {mean[BIDIRECTIONAL]:.3f} -> "
                     f"{'met' if a else 'not met'} (met: the causal model is above)")
        per_text = (trained[trained["run"].isin([CAUSAL, BIDIRECTIONAL])]
                    .groupby(["run", "batch"]).agg(n=("n", "first"), frac=("effective_rank_frac", "mean")).reset_index())
        by_n = per_text.groupby(["n", "run"])["frac"].agg(["mean", "size"]).unstack("run")
        shared = by_n[(by_n["size"] >= MIN_TEXTS).all(axis=1)] if by_n["size"].shape[1] == 2 else by_n.iloc[:0]
        above = int((shared["mean"][CAUSAL] > shared["mean"][BIDIRECTIONAL]).sum()) if len(shared) else 0
        b = len(shared) > 0 and above > len(shared) / 2
        lines.append(f"- Rule 4b: block sizes n shared with >= {MIN_TEXTS} texts each: "
                     f"{[int(n) for n in shared.index]}; {CAUSAL} above at {above} of {len(shared)} -> "
                     f"{'met' if b else 'not met'}")
        for n, row in shared.iterrows():
            lines.append(f"  - n={int(n)}: {CAUSAL} {row[('mean', CAUSAL)]:.3f} ({int(row[('size', CAUSAL)])} texts), "
                         f"{BIDIRECTIONAL} {row[('mean', BIDIRECTIONAL)]:.3f} ({int(row[('size', BIDIRECTIONAL)])} texts)")
        verdict = ("bidirectional lower-rank than causal" if a and b else
                   "bidirectional not lower-rank than causal" if not a and not b and len(shared) else
                   "no direction claimed (4a and 4b disagree, or no shared block size)")
        lines.append(f"- Rule 4 verdict: {verdict}")
    return lines


def save(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(out: Path = OUT) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_metrics(out)
    per_run = df.groupby(["model", "run", "when"])[["effective_rank_frac", "n"]].mean().reset_index()
    lines = ["| model | seeds | mean block size n | effective-rank fraction, init | trained / pretrained |",
             "|---|---|---|---|---|"]
    for model, g in per_run.groupby("model"):
        cells = []
        for when in ("init", "trained"):
            v = g.loc[g["when"] == when, "effective_rank_frac"].to_numpy()
            cells.append(f"{v.mean():.3f}" + (f" [{v.min():.3f}, {v.max():.3f}]" if len(v) > 1 else ""))
        lines.append(f"| {model} | {g['run'].nunique()} | {g['n'].mean():.1f} | {cells[0]} | {cells[1]} |")
    lines += [""] + rule_lines(df)

    trained = df[df["when"] == "trained"]
    by_layer = trained.groupby(["model", "run", "layer"]).agg(frac=("effective_rank_frac", "mean"),
                                                              depth=("depth", "first")).reset_index()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (model, g) in enumerate(by_layer.groupby("model")):
        s = g.groupby("depth")["frac"]
        ax.errorbar(s.mean().index, s.mean(), yerr=[s.mean() - s.min(), s.max() - s.mean()], marker="o", ms=3,
                    capsize=3, color=f"C{i}", label=f"{model} ({g['layer'].nunique()} layers)")
    save(fig, ax, "relative depth (first layer 0, last layer 1)", "effective rank / n",
         "self-attention, same 32 texts, trained / pretrained (bars: min-max over seeds)",
         out / "effective_rank_fraction_by_layer.png")

    per_text = trained.groupby(["model", "batch", "run"]).agg(n=("n", "first"), frac=("effective_rank_frac", "mean"))
    per_text = per_text.reset_index()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (model, g) in enumerate(per_text.groupby("model")):
        ax.scatter(g["n"], g["frac"], s=10, alpha=0.6, color=f"C{i}", label=model)
    save(fig, ax, "block size n (tokens of the text)", "effective rank / n (mean over layers, heads)",
         "one point per text (and seed): the fraction depends on n", out / "effective_rank_fraction_by_n.png")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
