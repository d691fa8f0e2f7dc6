"""``archcmp-analyze emergence PATH [PATH...]``: sharp and smooth metrics on the same decoded outputs.

For every run under the PATHs (run or sweep directories; see :mod:`archcmp.analysis.common.runs`) and
its final checkpoint (``--steps all``: every kept checkpoint, i.e. training steps), restore the
model, decode ``--examples`` fixed held-out examples of the run's task (``--split``, seed 0:
identical examples for every architecture and size) with the run's own decoder (greedy by
default; ``--strategy sample|beam`` and the other :class:`archcmp.decoding.generate.DecodeConfig` options),
score them (:mod:`archcmp.analysis.emergence.evaluate`), aggregate with bootstrap CIs, and compute
smoothness statistics across scale per architecture and metric: breakthroughness (Srivastava et
al. 2022; Schaeffer et al. 2023, eq. 1), two linearity indices (stand-ins, see
:mod:`archcmp.analysis.emergence.metrics`) and the p^L check (exact match predicted from the
measured per-token accuracy vs observed).

Writes into ``--out`` (default ``<first PATH>/analysis/emergence``): ``table.md``,
``metrics.csv`` (mean and CI per run, step, metric), ``examples.csv.gz`` (per example),
``smoothness.csv``, ``pl_check.csv``, ``runs.csv`` and PNG figures (``scaling.png``: one panel
per metric, one line per architecture with CI bands, x = parameters on a log axis, the sharp
metric first and the smooth ones beside it; ``pl_check.png``; ``sharp_vs_smooth.png``;
``steps.png`` with ``--steps all``). ``--wandb`` logs them (offline unless ``--wandb-mode``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from archcmp.analysis.common.wandb_log import add_options
from archcmp.analysis.common.cli import out_dir, probe_parser


def build_parser() -> argparse.ArgumentParser:
    p = probe_parser("emergence", __doc__)
    p.add_argument("--examples", type=int, default=512, help="held-out examples per run (default 512)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"),
                   help="which split the examples come from (default test)")
    p.add_argument("--steps", default="final", help="'final' (default), 'all' kept checkpoints, or e.g. '100,400'")
    d = p.add_argument_group("decoding (archcmp.decoding.generate.DecodeConfig; the encoder always mask-fills)")
    d.add_argument("--strategy", default="greedy", choices=("greedy", "sample", "beam"))
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--top-k", type=int, default=0)
    d.add_argument("--top-p", type=float, default=1.0)
    d.add_argument("--beam-width", type=int, default=4)
    d.add_argument("--length-penalty", type=float, default=0.6)
    d.add_argument("--repetition-penalty", type=float, default=1.0)
    d.add_argument("--refine-rounds", type=int, default=0, help="encoder: Mask-Predict refinement rounds")
    d.add_argument("--extra-tokens", type=int, default=2,
                   help="decode up to (longest answer + this) tokens, so over-long answers are visible")
    d.add_argument("--decode-seed", type=int, default=0, help="PRNG seed for --strategy sample")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    c = p.add_argument_group("success criterion (issue 17; archcmp.analysis.emergence.criterion)")
    c.add_argument("--criterion", action="store_true", help="also judge the criterion and write criterion.json")
    c.add_argument("--smallest-max", type=float, default=0.10, help="mean exact match allowed at the smallest size")
    c.add_argument("--largest-min", type=float, default=0.90, help="mean exact match needed at the largest size")
    add_options(p)
    return p


def decode_config(args, max_target: int):
    """DecodeConfig from the CLI options; a bad value raises ValueError naming the option."""
    from archcmp.decoding.generate import DecodeConfig

    if args.extra_tokens < 0:
        raise ValueError(f"--extra-tokens={args.extra_tokens}: must be >= 0")
    return DecodeConfig(strategy=args.strategy, max_new_tokens=max_target + args.extra_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty, beam_width=args.beam_width,
                        length_penalty=args.length_penalty, refine_rounds=args.refine_rounds)


def _check_args(args) -> None:
    if args.examples < 1:
        raise ValueError(f"--examples={args.examples}: must be a positive integer")
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap={args.bootstrap}: must be >= 0")
    if args.steps not in ("final", "all") and not all(s.strip().isdigit() for s in args.steps.split(",")):
        raise ValueError(f"--steps={args.steps!r}: use 'final', 'all' or comma-separated step numbers")
    decode_config(args, 1)  # validates the decoding options before any run is loaded


def collect(args, run_dirs: list[Path]) -> dict:
    """Evaluate every run; -> frames (long metrics, per example, p^L) and per-run info."""
    from tqdm.auto import tqdm

    from archcmp.analysis.emergence import evaluate as ev
    from archcmp.analysis.emergence import metrics as em
    from archcmp.analysis.rank.cli import TaskCache
    from archcmp.loading.run import read_run

    tasks, probe_cache = TaskCache(), {}
    long_rows, example_frames, pl_records, infos = [], [], [], []
    bar = tqdm(run_dirs, desc="emergence", unit="run", dynamic_ncols=True)
    for d in bar:
        try:
            run = read_run(d)
            bar.set_postfix_str(run.name, refresh=False)
            key = (run.config["task"]["name"], repr(run.config["task"].get("params")), run.config["task"]["seq_len"])
            if key not in probe_cache:
                probe_cache[key] = ev.probe_set(run, args.split, args.examples, tasks)
            probes = probe_cache[key]
            records, info = ev.evaluate_run(run, probes, decode_config(args, probes.max_target), args.steps,
                                            args.decode_seed)
        except Exception as err:  # noqa: BLE001 - one broken run must not stop the others
            tqdm.write(f"emergence: skipping {d}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        keys = ev.run_keys(run)
        for r in records:
            frame = r["frame"]
            agg = em.aggregate(frame, metrics=list(ev.METRICS), n=args.bootstrap)
            long_rows.append(em.to_long(agg, **keys, step=r["step"]))
            example_frames.append(frame.assign(**keys, step=r["step"]))
            pl_records.append({**keys, "step": r["step"], **r["pl"]})
        infos.append({**keys, "run_dir": str(d), "steps": info["steps"], "examples": len(probes.examples),
                      "fingerprint": probes.fingerprint, "status": run.summary.get("status"),
                      "train_steps": run.summary.get("steps"), "eval_loss": run.summary.get("eval_loss"),
                      "seconds": sum(r["seconds"] for r in records)})
    if not infos:
        return {}
    long_df = pd.concat(long_rows, ignore_index=True)
    return {"long": long_df, "examples": pd.concat(example_frames, ignore_index=True),
            "pl": em.pl_curves(pl_records), "infos": infos,
            "smooth": em.smoothness_table(long_df[long_df["metric"].isin(ev.METRICS)])}


def locate_runs(paths) -> list[Path]:
    """Run directories under ``paths``; FileNotFoundError naming the paths when there is none."""
    from archcmp.analysis.rank.cli import find_runs

    run_dirs = find_runs(paths)
    if not run_dirs:
        raise FileNotFoundError(f"no runs (directories with summary.json) under {', '.join(map(str, paths))}")
    return run_dirs


def run_cli(argv: list[str]) -> int:
    if any(a == "--pretrained" or a.startswith("--pretrained=") for a in argv):  # imported checkpoints
        from archcmp.analysis.emergence.answers import run_cli as score_pretrained

        return score_pretrained(argv)
    args = build_parser().parse_args(argv)
    from archcmp.distributed.hosts import quiet_libraries

    quiet_libraries()
    t0 = time.perf_counter()
    try:
        _check_args(args)
        run_dirs = locate_runs(args.paths)
    except (ValueError, FileNotFoundError) as err:
        print(f"emergence: error: {err}", file=sys.stderr)
        return 2
    res = collect(args, run_dirs)
    if not res:
        print("emergence: error: no run could be analysed (see the messages above)", file=sys.stderr)
        return 1
    from archcmp.analysis.emergence import report as rep

    out = out_dir(args, "emergence")
    out.mkdir(parents=True, exist_ok=True)
    res["seconds"] = time.perf_counter() - t0
    files = rep.write_outputs(res, out, args, argv)
    if args.wandb:
        rep.log_wandb(args, res, files, out)
    n_steps = sum(len(i["steps"]) for i in res["infos"])
    print(f"emergence: {len(res['infos'])} runs, {n_steps} checkpoints, {res['infos'][0]['examples']} examples each; "
          f"wrote {out}/table.md and {len(files) - 1} other files in {time.perf_counter() - t0:.1f} s")
    return 0
