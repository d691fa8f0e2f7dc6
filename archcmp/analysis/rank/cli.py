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
import sys
import time
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

from archcmp.analysis.common.wandb_log import add_options, log_outputs
from archcmp.analysis.rank.figures import make_figures, write_quality
from archcmp.analysis.rank.probe import TaskCache, analyze_pretrained, analyze_run, read_texts
from archcmp.analysis.rank.report import write_table
from archcmp.loading.run import read_run


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
