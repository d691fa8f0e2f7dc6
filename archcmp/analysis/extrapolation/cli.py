"""Length extrapolation: score a trained run on held-out data 1x, 2x, 4x, 8x longer than it was trained on.

    archcmp-analyze extrapolation RUNS_OR_SWEEP [--factors 1 2 4 8] [--examples 64] [--out DIR]

Each run keeps its parameters; only the evaluation data get longer. The run's task is rebuilt with
its length parameters multiplied by the factor (:func:`longer_task`: a text window ``seq_len``, an
induction segment ``length``, the recall ``shots``) and scored on the validation split with the
common yardstick (target-token cross-entropy, token accuracy, exact match), in the run's own layout.

Every positional encoding meets the longer input by its own rule (:class:`archcmp.model.embeddings.Positions`):
sinusoids, RoPE angles, T5 relative buckets (far offsets share the last bucket), ALiBi distances and
'none' are computed for any position; a learned table has no row past ``model.max_len``, so the
model refuses the input with a one-line error, which is recorded in the ``note`` column (loss NaN).

Outputs in ``--out``: ``per_run.csv`` (one row per run and factor), ``summary.csv`` and ``table.md``
(mean and 95% t-interval over seeds per encoding x architecture x factor), ``seeds.csv`` (per-seed
evidence for ``archcmp-claims``: condition = arch, group = encoding, ``loss_ratio_{k}x``) and
``extrapolation.png``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from archcmp.model.archs import arch_spec
from archcmp.analysis.common.cli import out_dir, probe_parser

# Task parameters that set the length of an example; each is multiplied by the factor.
LENGTH_PARAMS = ("seq_len", "length", "shots")


def _scale(value, factor: int):
    if isinstance(value, (list, tuple)):
        return [int(v) * factor for v in value]
    return int(value) * factor


def longer_task(tcfg: dict, factor: int) -> dict:
    """The task config ``{name, params, seq_len, enc_len}`` with examples ``factor`` times longer.

    A window's ``params.seq_len`` keeps its distance to the row length (the BOS/SEP slots):
    ``factor * task.seq_len - (task.seq_len - params.seq_len)``; the row length ``seq_len`` (and
    ``enc_len``) are multiplied.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor={factor!r}: must be a positive integer")
    params = dict(tcfg.get("params") or {})
    T = int(tcfg["seq_len"])
    found = [k for k in LENGTH_PARAMS if k in params]
    if not found:
        raise ValueError(f"task.name={tcfg['name']!r}: no length parameter to scale (one of {list(LENGTH_PARAMS)})")
    for key in found:
        if key == "seq_len":
            params[key] = factor * T - (T - int(params[key]))
        else:
            params[key] = _scale(params[key], factor)
    enc_len = tcfg.get("enc_len")
    return {"name": tcfg["name"], "params": params, "seq_len": factor * T,
            "enc_len": None if enc_len is None else factor * int(enc_len)}


def score(eval_step, state, task, arch: str, seq_len: int, enc_len: int | None, examples: int,
          batch_size: int) -> dict:
    """Yardstick of one model on the first ``examples`` validation examples at this length."""
    from archcmp.data import eval_batches
    from archcmp.training.steps import run_eval

    batches, exs = eval_batches(task, "validation", arch, seq_len, batch_size, examples, seed=0,
                                enc_len=arch_spec(arch).encoder_len(seq_len, enc_len), packing=False)
    if not exs:
        raise ValueError(f"no validation example of task {task.name!r} fits seq_len={seq_len}")
    sums = run_eval(eval_step, state, batches)
    w = max(sums["eval_weight_sum"], 1.0)
    return {"examples": len(exs), "loss": sums["eval_loss_sum"] / w, "accuracy": sums["eval_correct_sum"] / w,
            "exact_match": sums["eval_exact_sum"] / max(sums["eval_answer_count"], 1.0)}


_EVAL_STEPS: dict = {}  # ModelConfig -> jitted eval step: the seeds of a cell compile once


def evaluate_run(run, tasks, factors=(1, 2, 4, 8), examples: int = 64, batch_size: int = 16) -> list[dict]:
    """One row per factor: the run's last checkpoint scored at ``factor`` x its training length."""
    from flax import nnx

    from archcmp.training.checkpoint import Checkpointer
    from archcmp.model.models import build_model
    from archcmp.loading.run import restore_params, saved_steps
    from archcmp.training.steps import make_eval_step

    steps = saved_steps(run)
    if not steps:
        raise ValueError(f"{run.run_dir}: no checkpoint to evaluate")
    graphdef, state = nnx.split(build_model(run.model_cfg, run.seed))
    with Checkpointer(run.run_dir / "checkpoints", keep=None) as ck:
        state = restore_params(ck, run, steps[-1], state)
    if run.model_cfg not in _EVAL_STEPS:
        _EVAL_STEPS[run.model_cfg] = make_eval_step(graphdef)
    eval_step = _EVAL_STEPS[run.model_cfg]
    cfg = run.model_cfg
    tcfg = run.config["task"]
    base = {"run": run.name, "run_dir": str(run.run_dir), "arch": run.arch, "pos_encoding": cfg.pos_encoding, "seed": run.seed,
            "step": steps[-1], "train_len": int(tcfg["seq_len"])}
    rows = []
    for factor in factors:
        long = longer_task(tcfg, int(factor))
        row = {**base, "factor": int(factor), "eval_len": long["seq_len"], "note": ""}
        task = tasks.get(long["name"], long["params"])
        try:
            row.update(score(eval_step, state, task, run.arch, long["seq_len"], long["enc_len"], examples, batch_size))
        except ValueError as err:
            if cfg.pos_encoding != "learned":
                raise
            row.update(examples=0, loss=math.nan, accuracy=math.nan, exact_match=math.nan, note=str(err))
        rows.append(row)
    return rows


def summarize(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval over seeds per (pos_encoding, arch, factor)."""
    from archcmp.analysis.common.probe_tables import t_interval

    rows = []
    for (pos, arch, factor), g in per_run.groupby(["pos_encoding", "arch", "factor"], sort=True):
        row = {"pos_encoding": pos, "arch": arch, "factor": factor, "eval_len": int(g["eval_len"].iloc[0])}
        for metric in ("loss", "accuracy", "exact_match"):
            mean, half, n = t_interval(g[metric])
            row[metric], row[f"{metric}_ci95"] = mean, half
        row["n_seeds"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def seed_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Long per-seed evidence (``archcmp-claims``): condition = arch, group = pos_encoding, metrics
    ``loss_{k}x`` and ``loss_ratio_{k}x`` (loss at k x the training length over loss at 1x)."""
    rows = []
    # one group per run directory: two runs may share a run name (e.g. a key the name does not show)
    for run, g in per_run.groupby("run_dir" if "run_dir" in per_run else "run"):
        at = g.set_index("factor")["loss"]
        first = g.iloc[0]
        for factor, loss in at.items():
            key = {"condition": first["arch"], "group": first["pos_encoding"], "seed": int(first["seed"])}
            rows.append({**key, "metric": f"loss_{factor}x", "value": loss})
            if 1 in at.index:
                rows.append({**key, "metric": f"loss_ratio_{factor}x", "value": loss / at[1]})
    return pd.DataFrame(rows, columns=["condition", "group", "seed", "metric", "value"])


def plot(summary: pd.DataFrame, out: Path, metric: str = "loss") -> None:
    from matplotlib.figure import Figure

    archs = list(dict.fromkeys(summary["arch"]))
    fig = Figure(figsize=(4.2 * len(archs), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharey=True, squeeze=False)[0])
    for ax, arch in zip(axes, archs):
        g = summary[summary["arch"] == arch]
        for i, (pos, gp) in enumerate(g.groupby("pos_encoding")):
            gp = gp.sort_values("factor")
            ax.errorbar(gp["factor"], gp[metric], yerr=gp[f"{metric}_ci95"].fillna(0), marker="o", ms=3,
                        capsize=2, color=f"C{i}", label=pos)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation length / training length")
        ax.set_title(arch, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out cross-entropy (nats/target token)" if metric == "loss" else metric)
    axes[0].legend(fontsize=7)
    fig.savefig(out, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = probe_parser("extrapolation", __doc__)
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8], help="evaluation length / training length")
    p.add_argument("--examples", type=int, default=64, help="validation examples scored per run and factor")
    p.add_argument("--batch-size", type=int, default=16)
    return p


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from archcmp.analysis.emergence.plots import markdown_table
    from archcmp.analysis.common.probe_tables import collect_rows, write_tables
    from archcmp.analysis.rank.cli import TaskCache
    from archcmp.loading.run import read_run

    t0 = time.perf_counter()
    tasks = TaskCache()
    rows = collect_rows("extrapolation", args.paths,
                        lambda d: evaluate_run(read_run(d), tasks, args.factors, args.examples, args.batch_size))
    if rows is None:
        return 2
    per_run = pd.DataFrame(rows)
    summary = summarize(per_run)
    out = out_dir(args, "extrapolation")
    write_tables(out, per_run=per_run, summary=summary, seeds=seed_table(per_run))
    plot(summary, out / "extrapolation.png")
    notes = per_run[per_run["note"] != ""][["run", "factor", "note"]].drop_duplicates("run")
    text = ["# Length extrapolation", "", f"Command: `archcmp-analyze extrapolation {' '.join(map(str, argv))}`", "",
            "Held-out target-token cross-entropy (nats), token accuracy and exact match at k x the training "
            "length; mean and 95% t half-width over seeds.", "",
            markdown_table(summary, index=False, floatfmt=".4g"), ""]
    if len(notes):
        text += ["Refused lengths (the model's own error):", "", markdown_table(notes, index=False), ""]
    text += [f"Wall time of the analysis: {time.perf_counter() - t0:.0f} s", ""]
    (out / "table.md").write_text("\n".join(text))
    print(f"extrapolation: {per_run['run'].nunique()} runs; wrote {out}/table.md")
    return 0
