"""archcmp-bench sections ``compile`` (lower + XLA compile of the training step as depth grows, scan
and loop) and ``decode`` (greedy decoding with and without the KV cache)."""
from __future__ import annotations

import gc
import statistics
import time

import jax
import numpy as np
from flax import nnx

from archcmp.model.accounting import count_params
from archcmp.bench.common import RSS, Plan, bench_optim, log, make_batch, model_config
from archcmp.data import vocab
from archcmp.model.models import build_model
from archcmp.training.optim import make_optimizer
from archcmp.training.steps import make_train_step, split_microbatches
from archcmp.model.archs import arch_spec


def compile_cell(arch: str, n_layers: int, scan: bool, plan: Plan) -> dict[str, float]:
    """Lower + compile a fresh jit of our training step (no in-process cache hits)."""
    extra = dict(n_enc_layers=n_layers, n_dec_layers=n_layers) if arch_spec(arch).encoder_stack else dict(n_layers=n_layers)
    cfg = model_config(arch, plan.compile_size, plan.vocab, plan.seq, scan_layers=scan, **extra)
    B = plan.batch[plan.compile_size]
    graphdef, params = nnx.split(build_model(cfg, seed=0))
    tx = make_optimizer(bench_optim(), total_steps=10_000)
    state = {"params": params, "opt_state": tx.init(params)}
    batch = jax.device_put(split_microbatches(make_batch(arch, B, plan.seq, plan.vocab), 1))
    step = make_train_step(graphdef, tx, accum=1)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, None)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"lower": t1 - t0, "compile": t2 - t1, "total": t2 - t0,
            "n_params": int(sum(x.size for x in jax.tree.leaves(params)))}


def compile_section(plan: Plan, warm: bool) -> dict[tuple[str, int, bool], dict]:
    if not warm and not plan.quick:  # untimed: the first compile of a process pays one-off initialisation
        compile_cell(plan.compile_archs[0], 1, True, Plan(archs=[], sizes=[], sections=[], compile_size="tiny",
                                                          seq=16, vocab=64))
    results: dict[tuple[str, int, bool], dict] = {}
    for rep in range(plan.compile_reps):
        for arch in plan.compile_archs:
            for L in plan.compile_layers:
                for scan in ((True, False) if (rep + L) % 2 == 0 else (False, True)):  # alternate order
                    r = compile_cell(arch, L, scan, plan)
                    cell = results.setdefault((arch, L, scan), {"totals": [], "lowers": [], "compiles": [],
                                                                "n_params": r["n_params"]})
                    cell["totals"].append(r["total"])
                    cell["lowers"].append(r["lower"])
                    cell["compiles"].append(r["compile"])
                    log(f"compile {arch} L={L} {'scan' if scan else 'loop'}: lower {r['lower']:.2f}s "
                        f"+ compile {r['compile']:.2f}s")
    for cell in results.values():
        cell.update(total=statistics.median(cell["totals"]), lower=statistics.median(cell["lowers"]),
                    compile=statistics.median(cell["compiles"]))
    return results


def _zero_eos(model) -> None:
    """Make EOS never the argmax (its tied embedding row is zero, so its logit is 0 while the best
    of the other tokens is positive): every decode then runs the full number of new tokens."""
    table = model.embed.table
    table[...] = table[...].at[vocab.EOS].set(0.0)


def decode_section(plan: Plan, rss: RSS) -> list[dict]:
    from archcmp.decoding.generate import DecodeConfig, run_lm

    rows = []
    P, N, B = plan.decode_prompt, plan.decode_new, plan.decode_batch
    rng = np.random.default_rng(2)
    prompts = [rng.integers(vocab.N_SPECIAL, plan.vocab, P).astype(np.int32) for _ in range(B)]
    for arch in [a for a in plan.archs if arch_spec(a).autoregressive]:
        cfg = model_config(arch, plan.decode_size, plan.vocab, max_len=P + N + 2)
        model = build_model(cfg, seed=0)
        _zero_eos(model)
        modes = {}
        for cached in (True, False):
            dcfg = DecodeConfig(strategy="greedy", max_new_tokens=N, use_cache=cached)
            t0 = time.perf_counter()
            out, steps = run_lm(model, prompts, dcfg)
            jax.block_until_ready(out)
            modes[cached] = {"dcfg": dcfg, "compile_and_first": time.perf_counter() - t0, "times": [],
                             "steps": int(steps), "tokens": np.asarray(out)}
        for r in range(plan.decode_rounds):
            for cached in ((True, False) if r % 2 == 0 else (False, True)):
                t0 = time.perf_counter()
                out, steps = run_lm(model, prompts, modes[cached]["dcfg"])
                jax.block_until_ready(out)
                modes[cached]["times"].append(time.perf_counter() - t0)
            log(f"decode {arch}: round {r + 1}/{plan.decode_rounds}: cached "
                f"{statistics.median(modes[True]['times']):.2f}s, uncached {statistics.median(modes[False]['times']):.2f}s")
        row = {"arch": arch, "size": plan.decode_size, "batch": B, "prompt": P, "new": N,
               "n_params": count_params(cfg).total,
               "same_tokens": bool(np.array_equal(modes[True]["tokens"], modes[False]["tokens"]))}
        for cached, m in modes.items():
            med = statistics.median(m["times"])
            row["cached" if cached else "uncached"] = {"seconds": med, "steps": m["steps"],
                                                       "tokens_per_s": B * m["steps"] / med,
                                                       "compile_and_first": m["compile_and_first"]}
        row["speedup"] = row["cached"]["tokens_per_s"] / row["uncached"]["tokens_per_s"]
        rows.append(row)
        del model
        gc.collect()
    return rows


