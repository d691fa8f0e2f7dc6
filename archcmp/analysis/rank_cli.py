"""``archcmp-analyze rank PATH [PATH...] [--out DIR] [--examples N] [--wandb]``: the attention-rank probe.

For every run under the PATHs (a run directory with ``summary.json`` and ``checkpoints/``, or a
sweep directory holding several) and every saved checkpoint step, plus step 0 = the freshly
initialised model (``build_model(cfg, seed)``, the same initialisation the run trained from):

1. build ONE fixed held-out probe batch, identical for all architectures: the first ``--examples``
   validation examples of the run's task (``eval_batches(task, "validation", arch, seq_len, N, N,
   seed=0)``, task params from ``<run>/.hydra/config.yaml``), laid out for the run's architecture;
   their data fingerprint is reported so equality across runs can be checked;
2. restore the parameters with :class:`archcmp.checkpoint.Checkpointer` (abstract target built from
   ``nnx.split(build_model(...))`` and the run's optimizer state shape);
3. capture attention probabilities and hidden states (:mod:`archcmp.analysis.capture`), compute rank
   metrics of every example's own attention block per layer and head
   (:func:`archcmp.analysis.rank.attention_block_metrics`), and the rank-collapse residual per depth
   for the full model and the ablated stacks (``attn_only``, ``no_skip``, ``pure_attention``).

Writes into ``--out`` (default ``<first PATH>/analysis/rank``): ``metrics.csv`` (one row per run,
step, attention kind, layer, head, example), ``collapse.csv`` (run, step, stack, variant, depth,
example), ``table.md`` and PNG figures; ``--wandb`` also logs them with
:class:`archcmp.track_wandb.WandbTracker`.  Prints the throughput (matrices per second) at the end.
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

from archcmp.analysis.wandb_log import add_options, log_outputs

from archcmp.analysis.rank_report import write_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archcmp-analyze rank", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories")
    p.add_argument("--out", type=Path, default=None, help="output directory (default <first PATH>/analysis/rank)")
    p.add_argument("--examples", type=int, default=16, help="held-out examples in the probe batch (default 16)")
    p.add_argument("--steps", default="all", help="'all' (default) or comma-separated checkpoint steps (0 = init)")
    p.add_argument("--norm", default="l1inf", choices=("l1inf", "fro"), help="rank-collapse residual norm")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads for the SVDs (default 1: fastest for small matrices; 0 = leave as is)")
    add_options(p)
    return p


# ----------------------------------------------------------------------------- BLAS threads
_BLAS_SET = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
             "openblas_set_num_threads")


class blas_threads:
    """Context manager: limit OpenBLAS (numpy's LAPACK) to ``n`` threads, restored on exit.

    The probe runs thousands of small (~64 x 64) SVDs; multithreaded OpenBLAS only adds
    synchronisation there, and on a shared, loaded machine it is 5-100x slower than one thread.
    A no-op when no OpenBLAS is loaded in the process.
    """

    def __init__(self, n: int | None = 1):
        self.n, self._libs = n, []

    def __enter__(self):
        import ctypes

        if not self.n:
            return self
        try:
            paths = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
        except OSError:
            paths = set()
        for path in sorted(paths):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for name in _BLAS_SET:
                setter = getattr(lib, name, None)
                getter = getattr(lib, name.replace("set_num", "get_num"), None)
                if setter is not None and getter is not None:
                    old = int(getter())
                    setter(int(self.n))
                    self._libs.append((setter, old))
                    break
        return self

    def __exit__(self, *exc):
        for setter, old in self._libs:
            setter(old)
        return False


# ----------------------------------------------------------------------------- runs
@dataclass
class RunInfo:
    run_dir: Path
    summary: dict
    config: dict     # resolved .hydra/config.yaml
    model_cfg: Any   # ModelConfig

    @property
    def name(self) -> str:
        return str(self.summary.get("run_name") or self.run_dir.name)

    @property
    def arch(self) -> str:
        return self.model_cfg.arch

    @property
    def heads_tag(self) -> str:
        return f"h{self.model_cfg.n_heads}x{self.model_cfg.head_size}"

    @property
    def label(self) -> str:
        return f"{self.arch} {self.summary.get('size', '?')} {self.heads_tag}"


def find_runs(paths) -> list[Path]:
    """Run directories (with ``summary.json``) under ``paths``, de-duplicated, in order."""
    from archcmp.analysis.runs import find_run_dirs

    seen, out = set(), []
    for p in paths:
        for d in find_run_dirs(Path(p)):
            if d.resolve() not in seen:
                seen.add(d.resolve())
                out.append(d)
    return out


def load_run(run_dir: Path) -> RunInfo:
    from omegaconf import OmegaConf

    from archcmp.config import ModelConfig

    summary = json.loads((run_dir / "summary.json").read_text())
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: missing (the task parameters are read from it)")
    config = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    return RunInfo(run_dir, summary, config, ModelConfig(**summary["model"]))


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


def probe_batch(run: RunInfo, examples: int, tasks: TaskCache) -> tuple[dict, str, int]:
    """(batch, data fingerprint of its examples, number of examples) for ``run``."""
    from archcmp.data import eval_batches, fingerprint

    tcfg = run.config["task"]
    task = tasks.get(run.summary.get("task") or tcfg["name"], dict(tcfg.get("params") or {}))
    T = int(tcfg["seq_len"])
    enc_len = int(tcfg.get("enc_len") or T) if run.arch == "encdec" else None
    batches, exs = eval_batches(task, "validation", run.arch, T, examples, examples, seed=0, enc_len=enc_len)
    if not exs:
        raise ValueError(f"{run.run_dir}: no validation example fits task.seq_len={T}")
    return batches[0], fingerprint(exs), len(exs)


def checkpoint_steps(run: RunInfo) -> list[int]:
    from archcmp.checkpoint import Checkpointer

    d = run.run_dir / "checkpoints"
    if not d.is_dir():
        return []
    ck = Checkpointer(d, keep=None)
    try:
        return ck.all_steps()
    finally:
        ck.close()


def _restore_target(run: RunInfo, state):
    """Abstract target of a saved train state: ``{"params": <model state>, "opt_state": ...}``."""
    import jax

    from archcmp.optim import make_optimizer
    from archcmp.run_config import parse

    s, _ = parse(run.config)
    tx = make_optimizer(s.optim, s.train.steps)
    return {"params": jax.eval_shape(lambda x: x, state), "opt_state": jax.eval_shape(tx.init, state)}


def _strip_value(tree):
    if isinstance(tree, dict):
        if set(tree) == {"value"}:
            return tree["value"]
        return {k: _strip_value(v) for k, v in tree.items()}
    return tree


def restore_state(ck, run: RunInfo, step: int, state):
    """Model parameters of checkpoint ``step`` as an nnx State shaped like ``state``."""
    from flax import nnx

    try:
        restored, _ = ck.restore(step=step, target=_restore_target(run, state))
        return restored["params"]
    except Exception as err:  # noqa: BLE001 - e.g. optimizer settings changed: fall back to a generic restore
        warnings.warn(f"{run.name} step {step}: typed restore failed ({type(err).__name__}); "
                      "restoring without a target", RuntimeWarning, stacklevel=2)
        restored, _ = ck.restore(step=step, target=None)
        new = nnx.clone(state) if hasattr(nnx, "clone") else state
        nnx.replace_by_pure_dict(new, _strip_value(restored["params"]))
        return new


# ----------------------------------------------------------------------------- per run
def analyze_run(run: RunInfo, examples: int, tasks: TaskCache, steps: str = "all", norm: str = "l1inf",
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Metrics of every step of one run.  -> (attention metrics, rank collapse, info)."""
    from flax import nnx

    from archcmp.analysis import capture as cap_mod
    from archcmp.checkpoint import Checkpointer
    from archcmp.models import build_model

    t0 = time.perf_counter()
    batch, fp, n_ex = probe_batch(run, examples, tasks)
    model = build_model(run.model_cfg, int(run.summary.get("seed", 0)))
    graphdef, init_state = nnx.split(model)
    probe_fn = cap_mod.make_probe(graphdef)
    saved = checkpoint_steps(run)
    wanted = [0] + saved
    if steps != "all":
        keep = {int(s) for s in steps.split(",")}
        wanted = [s for s in wanted if s in keep]
    ck = Checkpointer(run.run_dir / "checkpoints", keep=None) if saved else None
    attn_frames, coll_frames = [], []
    t_metrics = t_restore = 0.0
    try:
        for step in wanted:
            tr = time.perf_counter()
            state = init_state if step == 0 else restore_state(ck, run, step, init_state)
            t_restore += time.perf_counter() - tr
            m = nnx.merge(graphdef, state)
            cap, variant_hidden = cap_mod.probe(m, batch, probe_fn, state)
            if not all(np.isfinite(v).all() for v in cap.attention.values()):
                warnings.warn(f"{run.name} step {step}: non-finite attention probabilities", RuntimeWarning)
            tm = time.perf_counter()
            df = cap_mod.capture_metrics(cap, batch, run.arch, keep_spectra=step in (0, wanted[-1]))
            t_metrics += time.perf_counter() - tm
            df.insert(0, "step", step)
            attn_frames.append(df)
            coll = cap_mod.collapse_from_hidden(variant_hidden, batch, norm)
            coll.insert(0, "step", step)
            coll_frames.append(coll)
    finally:
        if ck is not None:
            ck.close()
    meta = {"run": run.name, "arch": run.arch, "size": run.summary.get("size"), "n_heads": run.model_cfg.n_heads,
            "head_size": run.model_cfg.head_size, "d_model": run.model_cfg.d_model, "label": run.label,
            "heads_tag": run.heads_tag}
    attn = pd.concat(attn_frames, ignore_index=True)
    coll = pd.concat(coll_frames, ignore_index=True)
    for frame in (attn, coll):
        for i, (k, v) in enumerate(meta.items()):
            frame.insert(i, k, v)
    attn["abs_logdet_diff"] = attn["logdet_diff"].abs()
    tri = attn["is_triangular"].astype(bool)  # exact det > 0 there: a generic sign != +1 is an LU failure
    attn["sign_mismatch"] = np.where(tri, (attn["slogdet_sign"] != 1).astype(float), np.nan)
    info = {**meta, "steps": wanted, "saved_steps": saved, "examples": n_ex, "fingerprint": fp,
            "matrices": len(attn), "metric_seconds": t_metrics, "restore_seconds": t_restore,
            "seconds": time.perf_counter() - t0, "eval_loss": run.summary.get("eval_loss"),
            "params": run.summary.get("params_total"), "status": run.summary.get("status"),
            "final_step": max(wanted)}
    return attn, coll, info


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
    from archcmp.analysis.rank_plots import _plt
    from archcmp.analysis.capture import VARIANTS

    plt = _plt()
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
    from archcmp.analysis import rank_plots

    plt = rank_plots._plt()
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
    from archcmp.train import _quiet_libraries

    _quiet_libraries()
    out = args.out or (args.paths[0] / "analysis" / "rank")
    t0 = time.perf_counter()
    try:
        run_dirs = find_runs(args.paths)
    except FileNotFoundError as err:
        print(f"rank: {err}", file=sys.stderr)
        return 2
    if not run_dirs:
        print(f"rank: no run directories (with summary.json) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    tasks = TaskCache()
    attn_frames, coll_frames, infos = [], [], []
    for d in run_dirs:
        try:
            run = load_run(d)
            attn, coll, info = analyze_run(run, args.examples, tasks, args.steps, args.norm)
        except Exception as err:  # noqa: BLE001 - one broken run must not stop the others
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
    timing = {"matrices": len(attn), "metric_seconds": sum(i["metric_seconds"] for i in infos),
              "seconds": time.perf_counter() - t0, "norm": args.norm}
    write_table(out / "table.md", attn, coll, infos, timing, args.paths)
    timing["seconds"] = time.perf_counter() - t0  # including figures and table
    if args.wandb:
        log_wandb(args, figs, out, infos, timing)
    print(f"rank: wrote {out}/table.md, metrics.csv ({len(attn)} rows), collapse.csv and {len(figs)} figures")
    print(f"rank: {timing['matrices']} matrices in {timing['metric_seconds']:.2f} s of metric time: "
          f"{timing['matrices'] / max(timing['metric_seconds'], 1e-9):,.0f} matrices/s; "
          f"total {timing['seconds']:.1f} s for {len(infos)} runs "
          f"({timing['matrices'] / timing['seconds']:,.0f} matrices/s end to end)")
    return 0
