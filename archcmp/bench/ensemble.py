"""archcmp-bench section ``ensemble``: k small models trained in one vmapped step
(``train.num_seeds=k``, :mod:`archcmp.training.ensemble`) against the same k models trained one after another.

Both variants hold the same k states (seeds 0..k-1) and the same k batches (one per model) and
run the project's real training step: ``steps.make_stacked_train_step`` (one call per step for all
k) and ``steps.make_train_step`` (k calls per step, one compiled program). They alternate in
rounds like the other sections (:func:`archcmp.common.alternate`); figures are medians. Since both
take the same steps from the same states, their losses after the last round must agree (up to
the rounding of batched matmuls): the table shows the largest relative difference.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from archcmp.bench import common
from archcmp.training.ensemble import stack
from archcmp.model.models import build_model
from archcmp.training.optim import make_optimizer
from archcmp.training.steps import make_stacked_train_step, make_train_step, split_microbatches


def _states(cfg, k: int):
    tx = make_optimizer(common.bench_optim(), total_steps=10_000)
    states = []
    for seed in range(k):
        graphdef, params = nnx.split(build_model(cfg, seed=seed))
        states.append({"params": params, "opt_state": tx.init(params)})
    return graphdef, tx, states


def _compile(jitted, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


class VmapTrainer:
    """k models, one vmapped step: state and batches stacked on a leading member axis."""

    def __init__(self, cfg, batches: list[dict[str, np.ndarray]]):
        k = len(batches)
        self.name = f"vmap k={k}"
        graphdef, tx, states = _states(cfg, k)
        self.state = stack(states)
        self.batch = jax.device_put(stack([split_microbatches(b, 1) for b in batches]))
        self.compiled, self.compile_seconds = _compile(make_stacked_train_step(graphdef, tx, 1), self.state,
                                                       self.batch, None)
        self.losses = np.full(k, np.nan)

    def step(self) -> None:
        self.state, m = self.compiled(self.state, self.batch, None)
        jax.block_until_ready((self.state, m))
        self.losses = np.asarray(m["train_loss"])

    def close(self) -> None:
        self.state = self.batch = self.compiled = None


class SequentialTrainer:
    """The same k models one after another: k calls of the one-model step per step."""

    def __init__(self, cfg, batches: list[dict[str, np.ndarray]]):
        k = len(batches)
        self.name = f"sequential k={k}"
        graphdef, tx, self.states = _states(cfg, k)
        self.batches = [jax.device_put(split_microbatches(b, 1)) for b in batches]
        self.compiled, self.compile_seconds = _compile(make_train_step(graphdef, tx, 1), self.states[0],
                                                       self.batches[0], None)
        self.losses = np.full(k, np.nan)

    def step(self) -> None:
        metrics = []
        for i, batch in enumerate(self.batches):
            self.states[i], m = self.compiled(self.states[i], batch, None)
            metrics.append(m)
        jax.block_until_ready((self.states, metrics))
        self.losses = np.array([float(m["train_loss"]) for m in metrics])

    def close(self) -> None:
        self.states = self.batches = self.compiled = None


def ensemble_cell(arch: str, B: int, plan: Any, rss: Any) -> dict[str, Any]:
    k, size, T = plan.ensemble_k, plan.ensemble_size, plan.ensemble_seq
    cfg = common.model_config(arch, size, plan.vocab, T)
    batches = [common.make_batch(arch, B, T, plan.vocab, seed=10 + i) for i in range(k)]
    label = f"ensemble {arch} {size} k={k} B={B}"
    common.log(f"{label}: compiling the vmapped and the one-model step (B={B}, T={T})")
    variants = [VmapTrainer(cfg, batches), SequentialTrainer(cfg, batches)]
    for v in variants:
        for _ in range(plan.warmup):
            v.step()
    timings = common.alternate(variants, plan.ensemble_rounds, plan.ensemble_steps, rss, label)
    tokens_step = k * B * common.tokens_per_row(arch, T)
    row: dict[str, Any] = {"arch": arch, "size": size, "k": k, "batch": B, "seq": T, "tokens_per_step": tokens_step,
                           "params_per_model": int(sum(x.size for x in jax.tree.leaves(variants[1].states[0]["params"]))),
                           "variants": {}}
    for v in variants:
        med = statistics.median(timings[v.name]["times"])
        row["variants"][v.name] = {"step_seconds": med, "tokens_per_s": tokens_step / med,
                                   "times": timings[v.name]["times"], "compile_seconds": v.compile_seconds,
                                   "losses": v.losses.tolist()}
    vm, sq = (row["variants"][v.name] for v in variants)
    row["ratio"] = vm["tokens_per_s"] / sq["tokens_per_s"]
    row["max_rel_loss_diff"] = float(np.max(np.abs(np.subtract(vm["losses"], sq["losses"])) / np.abs(sq["losses"])))
    for v in variants:
        v.close()
    del variants
    gc.collect()
    return row


def ensemble_section(plan: Any, rss: Any) -> list[dict]:
    return [ensemble_cell(arch, B, plan, rss) for arch in plan.ensemble_archs for B in plan.ensemble_batches]


def ensemble_table(rows: list[dict]) -> list[str]:
    head = ("| arch | size | params per model | k | batch × seq per model | vmapped tok/s | sequential tok/s | "
            "vmapped / sequential | compile s vmapped / sequential | max rel. loss difference |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        vm, sq = (r["variants"][f"{name} k={r['k']}"] for name in ("vmap", "sequential"))
        lines.append(f"| {r['arch']} | {r['size']} | {r['params_per_model']:,} | {r['k']} | {r['batch']} × {r['seq']} | "
                     f"{vm['tokens_per_s']:,.0f} | {sq['tokens_per_s']:,.0f} | {r['ratio']:.2f}× | "
                     f"{vm['compile_seconds']:.1f} / {sq['compile_seconds']:.1f} | {r['max_rel_loss_diff']:.1e} |")
    return lines


def report(rows: list[dict], plan: Any) -> list[str]:
    """The section of the markdown report."""
    r = rows[0] if rows else None
    return ["## k models in one vmapped step (`train.num_seeds`)", "",
            (f"{r['k']} models of {r['params_per_model']:,} parameters (size {r['size']}, vocabulary {plan.vocab}), "
             f"each with its own batch of {r['seq']}-token rows, float32. " if r else "") +
            "`vmap`: the k states stacked, one call of `steps.make_stacked_train_step` per step (what "
            "`train.num_seeds=k` runs); `sequential`: the same k states, k calls of `steps.make_train_step` "
            "per step (k plain runs one after another, without their start-up and compile). Medians over "
            f"{plan.ensemble_rounds} alternating rounds × {plan.ensemble_steps} steps; tokens/s counts all k models. "
            "The data pipeline (k BatchIterators in the real loop) is not timed.", "",
            *ensemble_table(rows), ""]
