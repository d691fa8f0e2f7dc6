"""archcmp-bench: training speed, MFU, compile time and decode speed of archcmp against the
PyTorch implementation a user would otherwise pick (Hugging Face ``transformers``).

Everything runs in one process. Competing variants are measured in alternating rounds
(A, B, C, A, B, C, ...) so that drift of a shared machine lands on all of them; every figure
is a median over the rounds. Sections (``--sections``):

  mfu      dense float32 matmul peak of this machine (jnp and torch, best of both)
  train    training step (forward + backward + AdamW) tokens/s and peak memory: archcmp vs HF
           eager vs HF ``torch.compile``; archcmp's model FLOPs utilisation (exact FLOP count
           from :mod:`archcmp.model.accounting` over the measured matmul peak)
  compile  lower + XLA compile time of the training step at 2/12/24 layers, scan on and off
  decode   greedy decoding of 256 new tokens with and without the KV cache
  ensemble k=8 ~100k-parameter models in one vmapped step (``train.num_seeds``) vs the same 8 one
           after another, at 4 and 32 rows per model (:mod:`archcmp.bench.ensemble`)

The torch columns need the optional extra (``pip install -e ".[bench]"``); without it they
read "not installed" and everything else still runs.

Modules: :mod:`~archcmp.bench.common` (plan, shapes, batches, probes, alternation),
:mod:`~archcmp.bench.training` (mfu, train), :mod:`~archcmp.bench.compile_decode` (compile, decode),
:mod:`~archcmp.bench.ensemble`, :mod:`~archcmp.bench.report`; this file is the command line.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax

from archcmp.bench.common import (ARCHS, NOTES_MARKER, SECTIONS, SHAPES, RSS, Plan, bench_optim, log,
                                  make_batch, model_config, n_cores, persistent_cache_off, tokens_per_row)
from archcmp.bench.compile_decode import compile_section, decode_section
from archcmp.bench.records import write_json
from archcmp.bench.report import write_report
from archcmp.bench.training import measure_matmul_peak, torch_status, train_cell

# what scripts and tests use as archcmp.bench.<name>
__all__ = ["ARCHS", "NOTES_MARKER", "SECTIONS", "SHAPES", "Plan", "bench_optim", "build_plan", "main",
           "make_batch", "model_config", "run", "run_cli", "tokens_per_row"]

# ---- entry point ---------------------------------------------------------------------------------
def build_plan(args: argparse.Namespace) -> Plan:
    sizes = args.sizes or (["tiny"] if args.quick else ["3M", "20M"])
    plan = Plan(archs=args.archs, sizes=sizes, sections=args.sections, torch=not args.no_torch, quick=args.quick)
    if args.quick:
        plan.seq, plan.vocab = 32, 128
        plan.rounds = {s: 2 for s in SHAPES}
        plan.steps_per_round = {s: 1 for s in SHAPES}
        plan.batch = {s: 2 for s in SHAPES}
        plan.compile_layers, plan.compile_size = [1, 2], "tiny"
        plan.decode_size, plan.decode_batch, plan.decode_new, plan.decode_prompt = "tiny", 2, 8, 4
        plan.decode_rounds = 1
        plan.warmup = 1
        plan.matmul_sizes, plan.matmul_reps = [256], 2
        plan.ensemble_size, plan.ensemble_batches, plan.ensemble_rounds, plan.ensemble_steps = "tiny", [2], 2, 1
    if args.rounds:
        plan.rounds = {s: args.rounds for s in SHAPES}
    if args.compile_layers:
        plan.compile_layers = args.compile_layers
    plan.compile_archs = args.compile_archs or [a for a in plan.compile_archs if a in plan.archs] or plan.archs[:1]
    plan.ensemble_archs = [a for a in plan.ensemble_archs if a in plan.archs] or plan.archs[:1]
    if args.ensemble_k:
        plan.ensemble_k = args.ensemble_k
    return plan


def run(plan: Plan, out: Path | None, command: str = "archcmp-bench") -> dict[str, Any]:
    have_torch, torch_info = torch_status()
    if have_torch and plan.torch:
        import torch

        torch.set_num_threads(n_cores())
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel region
            torch.set_num_interop_threads(n_cores())
    elif not plan.torch:
        torch_info = "torch: skipped (--no-torch)"
    else:
        log(f"torch columns: {torch_info}")
    log(f"sections {plan.sections}, archs {plan.archs}, sizes {plan.sizes}; {torch_info}; "
        f"JAX devices {jax.devices()}, {n_cores()} cores")
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    t_start = time.perf_counter()
    rss = RSS()
    use_torch = have_torch and plan.torch
    peak = None
    with persistent_cache_off():  # the report's compile times are real compilations
        if "mfu" in plan.sections or "train" in plan.sections:
            results["mfu"] = measure_matmul_peak(plan, use_torch)
            peak = results["mfu"]["peak"]
        if "train" in plan.sections:
            results["train"] = []
            for size in plan.sizes:
                for arch in plan.archs:
                    results["train"].append(train_cell(arch, size, plan, have_torch, torch_info, peak, rss))
        if "compile" in plan.sections:
            results["compile"] = compile_section(plan, warm="train" in plan.sections)
        if "decode" in plan.sections:
            results["decode"] = decode_section(plan, rss)
        if "ensemble" in plan.sections:
            from archcmp.bench.ensemble import ensemble_section

            results["ensemble"] = ensemble_section(plan, rss)
    results["wall"] = time.perf_counter() - t_start
    results["load_after"] = os.getloadavg()
    text = write_report(out, plan, results, torch_info, command)
    print(text)
    if out is not None:
        write_json(out.with_suffix(".json"), results, command)
        log(f"wrote {out} and {out.with_suffix('.json')}")
    return results


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``archcmp-bench``)."""
    from archcmp.distributed.hosts import use_huge_pages

    use_huge_pages()  # the same process set-up as archcmp-train (all variants share it)
    run_cli(argv)


def run_cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the chosen sections, print the tables, write the report; -> results."""
    p = argparse.ArgumentParser(prog="archcmp-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, few iterations (seconds; used by the tests)")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--sizes", nargs="+", choices=list(SHAPES), help="default: 3M 20M (tiny with --quick)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--out", default="experiments/results/bench.md", help="markdown report ('-' = print only)")
    p.add_argument("--no-torch", action="store_true", help="skip the Hugging Face / torch columns")
    p.add_argument("--rounds", type=int, help="alternating rounds per training cell (default by size)")
    p.add_argument("--compile-layers", nargs="+", type=int, help="depths for the compile section (default 2 12 24)")
    p.add_argument("--compile-archs", nargs="+", choices=ARCHS,
                   help="archs for the compile section (default: decoder and encdec of --archs; encoder and "
                        "prefix_lm compile the same stack as decoder with another mask)")
    p.add_argument("--ensemble-k", type=int, help="models in the ensemble section (default 8)")
    args = p.parse_args(argv)
    plan = build_plan(args)
    command = "archcmp-bench" + ("" if not (sys.argv[1:] if argv is None else argv)
                                 else " " + " ".join(sys.argv[1:] if argv is None else argv))
    out = None if args.out == "-" else Path(args.out)
    return run(plan, out, command)

