"""``archcmp-analyze rank PATH [PATH...] [--pretrained DIR --texts FILE] [--out DIR] [--examples N] [--wandb]``:
the attention-rank probe.

``--pretrained DIR`` (repeatable) adds an imported checkpoint (:func:`archcmp.load_pretrained`),
probed on the ``--texts`` file (one text a line) at step 1, beside a random initialisation of
the same architecture at step 0. With ``--texts``, runs are probed on the same texts (in their
own task layout and tokenizer) instead of their task's validation examples.

For every run under the PATHs (a run directory with ``summary.json`` and ``checkpoints/``, or a
sweep directory holding several) and every saved checkpoint step, plus step 0 = the freshly
initialised model (``build_model(cfg, seed)``, the same initialisation the run trained from):

1. build ONE fixed held-out probe batch, identical for all architectures: the first ``--examples``
   validation examples of the run's task (``eval_batches(task, "validation", arch, seq_len, N, N,
   seed=0)``, task params from ``<run>/.hydra/config.yaml``), laid out for the run's architecture;
   their data fingerprint is reported so equality across runs can be checked;
2. restore the parameters with :class:`archcmp.training.checkpoint.Checkpointer` (abstract target built from
   ``nnx.split(build_model(...))`` and the run's optimizer state shape);
3. capture attention probabilities and hidden states (:mod:`archcmp.analysis.common.capture`), compute rank
   metrics of every example's own attention block per layer and head
   (:func:`archcmp.analysis.rank.metrics.attention_block_metrics`), and the rank-collapse residual per depth
   for the full model and the ablated stacks (``attn_only``, ``no_skip``, ``pure_attention``).

Writes into ``--out`` (default ``<first PATH>/analysis/rank``): ``metrics.csv`` (one row per run,
step, attention kind, layer, head, example), ``collapse.csv`` (run, step, stack, variant, depth,
example), ``table.md`` and PNG figures; ``--wandb`` also logs them with
:class:`archcmp.tracking.wandb_tracker.WandbTracker`.  Prints the throughput (matrices per second) at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from archcmp.analysis.common.wandb_log import add_options, log_outputs

from archcmp.analysis.rank.report import write_table
from archcmp.loading.run import RunInfo, read_run, restore_params, saved_steps
from archcmp.model.archs import arch_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archcmp-analyze rank", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", type=Path, help="run directories or sweep directories")
    p.add_argument("--pretrained", action="append", type=Path, default=[], metavar="DIR",
                   help="an imported checkpoint directory (config.json + *.safetensors + tokenizer.json); repeatable")
    p.add_argument("--texts", type=Path, default=None, metavar="FILE",
                   help="probe texts, one a line: every model (runs too) reads these instead of task examples")
    p.add_argument("--out", type=Path, default=None, help="output directory (default <first PATH>/analysis/rank)")
    p.add_argument("--examples", type=int, default=16, help="held-out examples in the probe batch (default 16)")
    p.add_argument("--steps", default="all", help="'all' (default) or comma-separated checkpoint steps (0 = init)")
    p.add_argument("--norm", default="l1inf", choices=("l1inf", "fro"), help="rank-collapse residual norm")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads for the SVDs (default 1: fastest for small matrices; 0 = leave as is)")
    add_options(p)
    return p


# ----------------------------------------------------------------------------- BLAS threads
def blas_threads(n: int | None = 1) -> threadpool_limits:
    """Context manager: limit BLAS (numpy's LAPACK) to ``n`` threads, restored on exit; ``n`` = 0 or
    None leaves them as they are.

    The probe runs thousands of small (~64 x 64) SVDs; multithreaded OpenBLAS only adds
    synchronisation there, and on a shared, loaded machine it is 5-100x slower than one thread.
    """
    return threadpool_limits(int(n) if n else None, user_api="blas")


# ----------------------------------------------------------------------------- runs
def find_runs(paths) -> list[Path]:
    """Run directories (with ``summary.json``) under ``paths``, de-duplicated, in order."""
    from archcmp.analysis.common.runs import find_run_dirs

    seen, out = set(), []
    for p in paths:
        for d in find_run_dirs(Path(p)):
            if d.resolve() not in seen:
                seen.add(d.resolve())
                out.append(d)
    return out


class TaskCache:
    """``make_task`` once per (name, params): Shakespeare loads and tokenises its text."""

    def __init__(self):
        self._tasks: dict[str, Any] = {}

    def get(self, name: str, params: dict):
        from archcmp.data import make_task

        key = json.dumps([name, params], sort_keys=True, default=str)
        if key not in self._tasks:
            self._tasks[key] = make_task(name, **params)
        return self._tasks[key]


def probe_batch(run: RunInfo, examples: int, tasks: TaskCache, texts: list[str] | None = None) -> tuple[dict, str, int]:
    """(batch, data fingerprint of its examples, number of examples) for ``run``: the task's first
    validation examples, or ``texts`` (one a row, in the run's task layout) when given."""
    from archcmp.data import eval_batches, fingerprint
    from archcmp.loading.loaded import format_texts

    tcfg = run.config["task"]
    task = tasks.get(run.summary.get("task") or tcfg["name"], dict(tcfg.get("params") or {}))
    T = int(tcfg["seq_len"])
    enc_len = arch_spec(run.arch).encoder_len(T, int(tcfg.get("enc_len") or T))
    if texts is not None:
        from archcmp.data.formatters import make_formatter

        batch = format_texts(make_formatter(run.arch, T, enc_len), task.tokenizer.encode, texts)
        return batch, texts_fingerprint(texts), len(texts)
    batches, exs = eval_batches(task, "validation", run.arch, T, examples, examples, seed=0, enc_len=enc_len)
    if not exs:
        raise ValueError(f"{run.run_dir}: no validation example fits task.seq_len={T}")
    return batches[0], fingerprint(exs), len(exs)


# ----------------------------------------------------------------------------- per run
def texts_fingerprint(texts: list[str]) -> str:
    """Fingerprint of a list of probe texts (equal across models probed on the same file)."""
    import hashlib

    return "texts:" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def probe_states(graphdef, states, batch: dict, arch: str, name: str, norm: str = "l1inf") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Rank metrics and rank collapse of one model structure at several parameter states.

    ``states`` yields ``(step, state)`` (restoring lazily); spectra are kept for the first and last
    step. -> (attention metrics, collapse, timings). The columns ``step`` first; the caller adds
    the model's description columns with :func:`finish_frames`.
    """
    from flax import nnx

    from archcmp.analysis.common import capture as cap_mod

    probe_fn = cap_mod.make_probe(graphdef)
    attn_frames, coll_frames, steps = [], [], []
    t_metrics = t_restore = 0.0
    states = iter(states)
    while True:
        tr = time.perf_counter()
        item = next(states, None)
        t_restore += time.perf_counter() - tr
        if item is None:
            break
        step, state = item
        steps.append(step)
        m = nnx.merge(graphdef, state)
        cap, variant_hidden = cap_mod.probe(m, batch, probe_fn, state)
        if not all(np.isfinite(v).all() for v in cap.attention.values()):
            warnings.warn(f"{name} step {step}: non-finite attention probabilities", RuntimeWarning)
        tm = time.perf_counter()
        df = cap_mod.capture_metrics(cap, batch, arch, keep_spectra=True)
        t_metrics += time.perf_counter() - tm
        df.insert(0, "step", step)
        attn_frames.append(df)
        coll = cap_mod.collapse_from_hidden(variant_hidden, batch, norm)
        coll.insert(0, "step", step)
        coll_frames.append(coll)
    # singular spectra only at the first and last step (memory)
    attn_frames[1:-1] = [df.drop(columns=["sv"], errors="ignore") for df in attn_frames[1:-1]]
    attn = pd.concat(attn_frames, ignore_index=True)
    coll = pd.concat(coll_frames, ignore_index=True)
    return attn, coll, {"steps": steps, "metric_seconds": t_metrics, "restore_seconds": t_restore}


def finish_frames(attn: pd.DataFrame, coll: pd.DataFrame, meta: dict) -> None:
    """Prefix the model's description columns (``meta``) and derived sign/logdet columns, in place."""
    for frame in (attn, coll):
        for i, (k, v) in enumerate(meta.items()):
            frame.insert(i, k, v)
    attn["abs_logdet_diff"] = attn["logdet_diff"].abs()
    tri = attn["is_triangular"].astype(bool)  # exact det > 0 there: a generic sign != +1 is an LU failure
    attn["sign_mismatch"] = np.where(tri, (attn["slogdet_sign"] != 1).astype(float), np.nan)


def analyze_run(run: RunInfo, examples: int, tasks: TaskCache, steps: str = "all", norm: str = "l1inf",
                texts: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Metrics of every step of one run.  -> (attention metrics, rank collapse, info)."""
    from flax import nnx

    from archcmp.training.checkpoint import Checkpointer
    from archcmp.model.models import build_model

    t0 = time.perf_counter()
    batch, fp, n_ex = probe_batch(run, examples, tasks, texts)
    graphdef, init_state = nnx.split(build_model(run.model_cfg, run.seed))
    saved = saved_steps(run)
    wanted = [0] + saved
    if steps != "all":
        keep = {int(s) for s in steps.split(",")}
        wanted = [s for s in wanted if s in keep]
    ck = Checkpointer(run.run_dir / "checkpoints", keep=None) if saved else None
    states = ((s, init_state if s == 0 else restore_params(ck, run, s, init_state)) for s in wanted)
    try:
        attn, coll, timing = probe_states(graphdef, states, batch, run.arch, run.name, norm)
    finally:
        if ck is not None:
            ck.close()
    meta = {"run": run.name, "arch": run.arch, "size": run.summary.get("size"), "n_heads": run.model_cfg.n_heads,
            "head_size": run.model_cfg.head_size, "d_model": run.model_cfg.d_model, "label": run.label,
            "heads_tag": run.heads_tag}
    finish_frames(attn, coll, meta)
    info = {**meta, "seed": run.seed, "run_dir": str(run.run_dir), "steps": wanted, "saved_steps": saved, "examples": n_ex, "fingerprint": fp,
            "matrices": len(attn), "metric_seconds": timing["metric_seconds"],
            "restore_seconds": timing["restore_seconds"],
            "seconds": time.perf_counter() - t0, "eval_loss": run.summary.get("eval_loss"),
            "params": run.summary.get("params_total"), "status": run.summary.get("status"),
            "final_step": max(wanted)}
    return attn, coll, info


PRETRAINED_STEP = 1  # the imported parameters; step 0 is a fresh initialisation of the same config


def analyze_pretrained(directory: Path, texts: list[str], norm: str = "l1inf") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Metrics of an imported checkpoint on ``texts`` (step 1) beside a random initialisation of the
    same architecture (step 0, seed 0), like a run's init -> trained.  -> (attention, collapse, info)."""
    import jax
    from flax import nnx

    from archcmp.model.accounting import count_params
    from archcmp.model.models import build_model
    from archcmp.loading.pretrained import load_pretrained

    t0 = time.perf_counter()
    loaded = load_pretrained(directory)
    cfg = loaded.config
    batch = loaded.batch(texts)
    graphdef, state = nnx.split(loaded.model)
    init_state = jax.jit(lambda: nnx.split(build_model(cfg, 0))[1])()
    name = loaded.info["name"]
    attn, coll, timing = probe_states(graphdef, [(0, init_state), (PRETRAINED_STEP, state)], batch, cfg.arch, name, norm)
    heads_tag = f"h{cfg.n_heads}x{cfg.head_size}"
    meta = {"run": name, "arch": cfg.arch, "size": name, "n_heads": cfg.n_heads, "head_size": cfg.head_size,
            "d_model": cfg.d_model, "label": f"{name} ({loaded.info['model_type']}, {cfg.arch}) {heads_tag}",
            "heads_tag": heads_tag}
    finish_frames(attn, coll, meta)
    info = {**meta, "seed": 0, "run_dir": None, "steps": timing["steps"], "saved_steps": [PRETRAINED_STEP], "examples": len(texts),
            "fingerprint": texts_fingerprint(texts), "matrices": len(attn),
            "metric_seconds": timing["metric_seconds"], "restore_seconds": loaded.info["load_seconds"],
            "seconds": time.perf_counter() - t0, "eval_loss": None, "params": count_params(cfg).total,
            "status": "pretrained", "final_step": PRETRAINED_STEP}
    return attn, coll, info


def read_texts(path: Path) -> list[str]:
    """One text a line; blank lines skipped."""
    texts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"--texts {path}: no non-blank line")
    return texts


# ----------------------------------------------------------------------------- grouping
def figure_groups(infos: list[dict]) -> dict[str, list[str]]:
    """Figure group -> run names: one group per size (runs with that size's most common head
    count), plus ``<size>-heads`` with every head count of the archs that have several."""
    df = pd.DataFrame(infos)
    groups: dict[str, list[str]] = {}
    for size, g in df.groupby("size", sort=False):
        modal = g["n_heads"].mode().iloc[0]
        groups[str(size)] = list(g.loc[g["n_heads"] == modal, "run"])
        multi = [a for a, ga in g.groupby("arch") if ga["n_heads"].nunique() > 1]
        if multi:
            groups[f"{size}-heads"] = list(g.loc[g["arch"].isin(multi), "run"])
    return groups


def _panel(df: pd.DataFrame, with_heads: bool) -> pd.Series:
    base = df["arch"] + (" " + df["heads_tag"] if with_heads else "")
    return np.where(df["kind"].isin(["self"]), base, base + "/" + df["kind"])


# ----------------------------------------------------------------------------- figures
def _collapse_figure(coll: pd.DataFrame, infos: list[dict], runs: list[str], path: Path) -> Path:
    from archcmp.analysis.rank.plots import pyplot
    from archcmp.analysis.common.capture import VARIANTS

    plt = pyplot()
    final = {i["run"]: i["final_step"] for i in infos}
    panels = [(r, s) for r in runs for s in coll.loc[coll["run"] == r, "stack"].unique()]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (run, stack) in zip(axes.ravel(), panels):
        g = coll[(coll["run"] == run) & (coll["stack"] == stack)]
        for i, v in enumerate(VARIANTS):
            for step, ls in ((0, "--"), (final[run], "-")):
                s = g[(g["variant"] == v) & (g["step"] == step)].groupby("layer")["relative"].mean()
                ax.semilogy(s.index, np.maximum(s.to_numpy(), 1e-12), ls=ls, marker="o", ms=3, color=f"C{i}",
                            label=f"{v} ({'init' if step == 0 else 'trained'})")
        r = g.iloc[0]
        ax.set_title(f"{r['arch']} {r['heads_tag']}" + ("" if stack == "stack" else f" [{stack}]"), fontsize=9)
        ax.set_xlabel("depth")
        ax.set_ylabel("relative residual")
    axes.ravel()[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_figures(attn: pd.DataFrame, coll: pd.DataFrame, infos: list[dict], out: Path) -> dict[str, Path]:
    from archcmp.analysis.rank import plots as rank_plots

    plt = rank_plots.pyplot()
    final = {i["run"]: i["final_step"] for i in infos}
    attn = attn.assign(final=attn["step"] == attn["run"].map(final))
    figs: dict[str, Path] = {}
    for tag, runs in figure_groups(infos).items():
        g = attn[attn["run"].isin(runs)]
        g = g.assign(panel=_panel(g, tag.endswith("-heads")))
        for when, sel in (("init", g["step"] == 0), ("trained", g["final"])):
            p = out / f"heatmap_effective_rank_{tag}_{when}.png"
            plt.close(rank_plots.plot_rank_heatmaps(g[sel], "effective_rank", arch_col="panel", path=p))
            figs[p.stem] = p
            p = out / f"spectra_{tag}_{when}.png"
            fig = rank_plots.plot_singular_spectra(g[sel & (g["kind"] != "cross")], arch_col="panel", per_arch=3, path=p)
            fig.axes[0].set_title(f"{tag}: singular values at {when}", fontsize=9)
            fig.savefig(p, dpi=120)
            plt.close(fig)
            figs[p.stem] = p
        for metric in ("effective_rank", "log10_cond"):
            p = out / f"{metric}_vs_step_{tag}.png"
            v = g.assign(log10_cond=g["log10_cond"].replace(np.inf, 17.0))  # inf cond drawn at 1e17
            plt.close(rank_plots.plot_metric_vs_step(v, metric, arch_col="panel", path=p))
            figs[p.stem] = p
        p = out / f"rank_collapse_{tag}.png"
        figs[p.stem] = _collapse_figure(coll, infos, runs, p)
    return figs


def write_quality(attn: pd.DataFrame, infos: list[dict], out: Path) -> tuple[dict[str, Path], dict[str, pd.DataFrame]]:
    """``checkpoints.csv`` (effective rank relative to the uniform causal matrix per run, kind and
    step, with that step's eval loss when the run evaluated there), ``prefix_contrast.csv``,
    ``rank_quality.csv`` (Spearman per run and kind) and the figure ``rank_vs_eval_loss.png``.
    -> (figures, the frames by file stem)."""
    from archcmp.analysis.rank import quality as q
    from archcmp.analysis.rank.plots import plot_rank_vs_loss, pyplot

    runs = pd.DataFrame(infos)
    seeds = runs.set_index("run")["seed"] if "seed" in runs else pd.Series(0, index=runs["run"])
    means = q.checkpoint_means(attn.assign(seed=attn["run"].map(seeds)))
    evals = [q.read_evals(i["run_dir"]).assign(run=i["run"]) for i in infos if i.get("run_dir")]
    evals = pd.concat(evals, ignore_index=True) if evals else pd.DataFrame(columns=["run", "step", "eval_loss"])
    joined = q.join_evals(means, evals)
    frames = {"checkpoints": means.merge(evals, on=["run", "step"], how="left"),
              "prefix_contrast": q.prefix_contrast(means), "rank_quality": q.rank_quality(joined)}
    for stem, frame in frames.items():
        frame.to_csv(out / f"{stem}.csv", index=False, float_format="%.6g")
    if joined.empty:
        return {}, frames
    modal = runs.groupby("size")["n_heads"].agg(lambda s: s.mode().iloc[0])
    joined = joined[joined["n_heads"] == joined["size"].map(modal)]
    p = out / "rank_vs_eval_loss.png"
    pyplot().close(plot_rank_vs_loss(joined, q.REL, path=p))
    return {p.stem: p}, frames


def log_wandb(args, figs: dict[str, Path], out: Path, infos: list[dict], timing: dict) -> None:
    log_outputs(args, "rank", out, {**figs, "table_md": out / "table.md"},
                summary={"matrices": timing["matrices"],
                         "matrices_per_second": timing["matrices"] / max(timing["metric_seconds"], 1e-9)},
                config={"paths": [str(p) for p in args.paths], "examples": args.examples,
                        "runs": [i["run"] for i in infos]})


# ----------------------------------------------------------------------------- entry
def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import numpy  # noqa: F401 - load OpenBLAS so that its thread count can be set

    with blas_threads(args.blas_threads):
        return _run(args)


def _run(args) -> int:
    from archcmp.distributed.hosts import quiet_libraries

    quiet_libraries()
    if not args.paths and not args.pretrained:
        print("rank: give run/sweep PATHs and/or --pretrained DIR", file=sys.stderr)
        return 2
    if args.pretrained and args.texts is None:
        print("rank: --pretrained needs --texts FILE (one probe text a line)", file=sys.stderr)
        return 2
    out = args.out or ((args.paths[0] if args.paths else args.pretrained[0]) / "analysis" / "rank")
    t0 = time.perf_counter()
    texts = read_texts(args.texts) if args.texts is not None else None
    try:
        run_dirs = find_runs(args.paths)
    except FileNotFoundError as err:
        print(f"rank: {err}", file=sys.stderr)
        return 2
    if args.paths and not run_dirs:
        print(f"rank: no run directories (with summary.json) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    tasks = TaskCache()
    attn_frames, coll_frames, infos = [], [], []
    jobs = [(d, lambda d=d: analyze_run(read_run(d), args.examples, tasks, args.steps, args.norm, texts))
            for d in run_dirs]
    jobs += [(d, lambda d=d: analyze_pretrained(d, texts, args.norm)) for d in args.pretrained]
    for d, job in jobs:
        try:
            attn, coll, info = job()
        except Exception as err:  # noqa: BLE001 - one broken model must not stop the others
            print(f"rank: skipping {d}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        if not info["saved_steps"]:
            print(f"rank: {d}: no checkpoints, step 0 (initialisation) only", file=sys.stderr)
        print(f"rank: {info['run']}: steps {info['steps']}, {info['matrices']} matrices, "
              f"{info['seconds']:.1f} s ({info['matrices'] / max(info['metric_seconds'], 1e-9):,.0f} matrices/s in metrics)")
        attn_frames.append(attn)
        coll_frames.append(coll)
        infos.append(info)
    if not infos:
        print("rank: no run could be analysed", file=sys.stderr)
        return 1
    attn = pd.concat(attn_frames, ignore_index=True)
    coll = pd.concat(coll_frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    attn.drop(columns=["sv"], errors="ignore").to_csv(out / "metrics.csv", index=False, float_format="%.6g")
    coll.to_csv(out / "collapse.csv", index=False, float_format="%.6g")
    pd.DataFrame(infos).to_csv(out / "runs.csv", index=False)
    figs = make_figures(attn, coll, infos, out)
    quality_figs, frames = write_quality(attn, infos, out)
    figs.update(quality_figs)
    timing = {"matrices": len(attn), "metric_seconds": sum(i["metric_seconds"] for i in infos),
              "seconds": time.perf_counter() - t0, "norm": args.norm}
    write_table(out / "table.md", attn, coll, infos, timing, list(args.paths) + list(args.pretrained), frames)
    timing["seconds"] = time.perf_counter() - t0  # including figures and table
    if args.wandb:
        log_wandb(args, figs, out, infos, timing)
    print(f"rank: wrote {out}/table.md, metrics.csv ({len(attn)} rows), collapse.csv and {len(figs)} figures")
    print(f"rank: {timing['matrices']} matrices in {timing['metric_seconds']:.2f} s of metric time: "
          f"{timing['matrices'] / max(timing['metric_seconds'], 1e-9):,.0f} matrices/s; "
          f"total {timing['seconds']:.1f} s for {len(infos)} runs "
          f"({timing['matrices'] / timing['seconds']:,.0f} matrices/s end to end)")
    return 0
