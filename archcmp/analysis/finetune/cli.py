"""Fine-tuning results: downstream accuracy per task x method, with intervals over seeds.

    archcmp-analyze finetune RUNS_OR_SWEEPS [--out DIR]

Reads the ``summary.json`` of every fine-tuned run (``archcmp-train ... finetune.from=RUN``) under
the paths. A run's *method* is ``<arch>/<head>``, with ``+aux<λ>`` when it had an auxiliary LM loss
and ``+always_mask`` when its source was an encoder pre-trained with every chosen MLM token replaced
by MASK (``arch.mlm_replacement=mask``); e.g. ``decoder/last``, ``decoder/last+aux0.5``,
``encoder/first+always_mask``.

A run that started from an earlier checkpoint of its source than the other runs of its
architecture (``finetune.step``) gets ``@pre<step>``, e.g. ``decoder/last@pre150``.

Outputs in ``--out``: ``per_run.csv``; ``table.md`` (accuracy, majority baseline and accuracy over
chance, mean and 95% t-interval over seeds per task x method); ``seeds.csv``, the per-seed evidence
for ``archcmp-claims`` (condition = task, group = method; metrics ``accuracy``,
``accuracy_over_chance``, ``eval_loss``, and ``mask_free_accuracy`` for classifier heads, whose
inputs hold no MASK; and ``pretrain_gain_4x`` with group = the architecture: the accuracy of its
plain classifier (``PRIMARY_HEAD``) fine-tuned from the last pre-training checkpoint minus from the
checkpoint at a quarter of those steps, paired by seed); ``finetune.png`` (accuracy per method and
task, the majority baseline dashed); ``curves.png`` (validation accuracy over fine-tuning steps).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd


def method_of(summary: dict) -> str:
    """``<arch>/<head>[+aux<λ>][+always_mask]`` of a fine-tuned run's summary."""
    ft = summary["finetune"]
    name = f"{summary['arch']}/{ft['head']}"
    if not ft.get("train_backbone", True):
        name += "+probe"
    if ft.get("aux_lm_weight", 0):
        name += f"+aux{ft['aux_lm_weight']:g}"
    if ft.get("source_objective") == "mlm" and ft.get("source_mlm_replacement") == "mask":
        name += "+always_mask"
    return name


# the plain classifier of each architecture, the one pretrain_gain_4x compares (the registry's C10
# pairs encoder/first with decoder/last; prefix_lm and encdec use the last position as the decoder)
PRIMARY_HEAD = {"decoder": "last", "prefix_lm": "last", "encdec": "last", "encoder": "first"}


def run_rows(paths) -> list[dict]:
    from archcmp.analysis.common.runs import find_run_dirs

    rows = []
    for root in paths:
        for d in find_run_dirs(Path(root)):
            s = json.loads((d / "summary.json").read_text())
            if s.get("objective") != "finetune" or s.get("status") != "complete":
                continue
            rows.append({"run_dir": str(d), "task": s["task"], "method": method_of(s), "arch": s["arch"],
                         "head": s["finetune"]["head"], "seed": int(s["seed"]), "size": s.get("size"),
                         "accuracy": s["eval_accuracy"], "majority_baseline": s["majority_baseline"],
                         "accuracy_over_chance": s["accuracy_over_chance"], "eval_loss": s["eval_loss"],
                         "data_fingerprint": s["data_fingerprint"], "wall_seconds": s.get("wall_seconds"),
                         "source_step": int(s["finetune"].get("source_step") or 0), "steps": s.get("steps")})
    last = {}
    for r in rows:  # the newest source checkpoint any run of the architecture started from
        last[r["arch"]] = max(last.get(r["arch"], 0), r["source_step"])
    for r in rows:
        r["base_method"] = r["method"]
        if r["source_step"] < last[r["arch"]]:
            r["method"] += f"@pre{r['source_step']}"
    return rows


def pretrain_gain(runs: pd.DataFrame) -> list[dict]:
    """``pretrain_gain_4x`` rows: per task, architecture and seed, the accuracy of its primary
    method from the newest source checkpoint minus from the checkpoint at a quarter of its steps."""
    out = []
    for (task, arch, seed), g in runs.groupby(["task", "arch", "seed"], sort=True):
        g = g[g.base_method == f"{arch}/{PRIMARY_HEAD.get(arch, 'last')}"]
        if g.empty:
            continue
        top = int(g.source_step.max())
        hi, lo = g[g.source_step == top], g[g.source_step * 4 == top]
        if len(hi) == 1 and len(lo) == 1:
            out.append({"condition": task, "group": arch, "seed": int(seed), "metric": "pretrain_gain_4x",
                        "value": float(hi.accuracy.iloc[0] - lo.accuracy.iloc[0])})
    return out


def seed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long per-seed evidence: condition (task), group (method), seed, metric, value."""
    out = []
    for r in runs.itertuples():
        metrics = {"accuracy": r.accuracy, "accuracy_over_chance": r.accuracy_over_chance, "eval_loss": r.eval_loss}
        if r.head != "generate":
            metrics["mask_free_accuracy"] = r.accuracy
        out += [{"condition": r.task, "group": r.method, "seed": r.seed, "metric": k, "value": v}
                for k, v in metrics.items()]
    out += pretrain_gain(runs)
    return pd.DataFrame(out).sort_values(["condition", "group", "metric", "seed"], kind="stable")


def _cell(values) -> str:
    from archcmp.analysis.common.probe_tables import t_interval

    m, half, n = t_interval(list(values))
    return f"{m:.3f}" if math.isnan(half) else f"{m:.3f} ± {half:.3f}"


def markdown(runs: pd.DataFrame) -> str:
    lines = ["| task | method | seeds | accuracy | majority baseline | accuracy over chance |", "|---|---|---|---|---|---|"]
    for (task, method), g in runs.groupby(["task", "method"], sort=True):
        lines.append(f"| {task} | {method} | {len(g)} | {_cell(g.accuracy)} | {g.majority_baseline.mean():.3f} | "
                     f"{_cell(g.accuracy_over_chance)} |")
    return "\n".join(lines) + "\n"


def figure(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from archcmp.analysis.common.probe_tables import t_interval

    tasks, methods = sorted(runs.task.unique()), sorted(runs.method.unique())
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(methods) * len(tasks) / 2), 4))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        means, halves = [], []
        for task in tasks:
            m, half, _ = t_interval(list(runs[(runs.task == task) & (runs.method == method)].accuracy))
            means.append(m)
            halves.append(0.0 if math.isnan(half) else half)
        ax.bar(np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width, means, width, yerr=halves, capsize=2, label=method)
    for i, task in enumerate(tasks):
        base = runs[runs.task == task].majority_baseline.mean()
        ax.hlines(base, i - 0.45, i + 0.45, colors="k", linestyles="dashed", linewidth=1)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("validation accuracy (mean, 95% t-interval over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title("fine-tuned accuracy per method; dashed: majority-class baseline")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eval_curve(run_dir: str) -> list[tuple[int, float]]:
    """(step, validation accuracy) of every evaluation in a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    points = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if "eval_accuracy" in rec and "step" in rec:
            points[int(rec["step"])] = float(rec["eval_accuracy"])
    return sorted(points.items())


def curves_figure(runs: pd.DataFrame, path: Path) -> None:
    """Validation accuracy over fine-tuning steps, mean over seeds, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(runs.task.unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = runs[runs.task == task]
        for method, g in sub.groupby("method", sort=True):
            per_step: dict[int, list[float]] = {}
            for d in g.run_dir:
                for step, acc in eval_curve(d):
                    per_step.setdefault(step, []).append(acc)
            if per_step:
                steps = sorted(per_step)
                ax.plot(steps, [sum(per_step[k]) / len(per_step[k]) for k in steps], marker=".", label=method)
        ax.axhline(sub.majority_baseline.mean(), color="k", linestyle="dashed", linewidth=1)
        ax.set_title(task)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylim(0.3, 1)
    axes[0][0].set_ylabel("validation accuracy (mean over seeds)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="archcmp-analyze finetune", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="fine-tuned run directories or sweep directories")
    p.add_argument("--out", type=Path, default=Path("analysis/finetune"))
    args = p.parse_args(argv)
    try:
        rows = run_rows(args.paths)
    except FileNotFoundError as err:
        print(f"finetune: error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"finetune: error: no complete fine-tuned run under {args.paths}", file=sys.stderr)
        return 2
    runs = pd.DataFrame(rows).sort_values(["task", "method", "seed"], kind="stable")
    from archcmp.analysis.common.probe_tables import write_tables

    write_tables(args.out, per_run=runs, seeds=seed_table(runs))
    (args.out / "table.md").write_text(markdown(runs))
    figure(runs, args.out / "finetune.png")
    curves_figure(runs, args.out / "curves.png")
    for task, g in runs.groupby("task"):
        if g.data_fingerprint.nunique() > 1:  # the methods of a task must have read the same examples
            per = g.groupby("seed").data_fingerprint.nunique()
            if (per > 1).any():
                print(f"finetune: warning: task {task}: runs of the same seed read different examples", file=sys.stderr)
    print(markdown(runs))
    return 0
