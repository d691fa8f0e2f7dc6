"""Compile time of a full training step vs depth, ``scan_layers`` True vs False.

For each architecture (decoder, encdec), depth (2, 12, 24 by default) and layer mode (scan,
loop) this builds the model, splits it with ``nnx.split`` and measures, for a freshly created
``jax.jit`` training step (``nnx.merge`` -> logits -> mean cross-entropy -> ``value_and_grad``
-> ``optax.adamw`` update):

* ``lower``   : trace + lower to StableHLO (``jitted.lower(...)``),
* ``compile`` : XLA compilation (``lowered.compile()``),
* ``total``   : lower + compile (the number the ratios use).

The sweep is repeated ``--repeats`` times (default 3, alternating order; a new jit function
each time, so nothing is cached in-process) and each cell keeps its minimum. Prints a markdown table plus the ratio
``24 / 2`` (deepest / shallowest) for scan and loop, and writes it, with machine info and the
command, to ``experiments/results/compile_time.md``.

Usage::

    python experiments/compile_time.py                       # full default sweep
    python experiments/compile_time.py --archs decoder --layers 2 4 --repeats 1   # quick
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archcmp.bench.common import persistent_cache_off  # noqa: E402
from archcmp.model.config import ModelConfig  # noqa: E402
from archcmp.model.models import build_model  # noqa: E402


def make_batch(arch: str, batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    tokens = lambda: jnp.asarray(rng.integers(21, vocab, (batch, seq)), jnp.int32)  # noqa: E731
    ones = jnp.ones((batch, seq), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    out = {"inputs": tokens(), "targets": tokens(), "segment_ids": ones, "positions": pos}
    if arch == "prefix_lm":
        out["prefix_mask"] = pos < seq // 2
    if arch == "encdec":
        out.update(enc_inputs=tokens(), enc_segment_ids=ones, enc_positions=pos)
    return out


def make_step(graphdef, tx):
    """A fresh jitted training step (new function object -> no in-process cache hits)."""

    def loss_fn(state, batch):
        model = nnx.merge(graphdef, state)
        logits = model(batch)  # [B, T, V] float32
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    def train_step(state, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state, batch)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    return jax.jit(train_step)


def measure(cfg: ModelConfig, batch_size: int, seq: int, run_step: bool = True) -> dict[str, float]:
    """One lower + compile of a freshly jitted training step (and optionally one real step)."""
    model = build_model(cfg, seed=0)
    graphdef, state = nnx.split(model)
    tx = optax.adamw(1e-3, weight_decay=0.01)
    opt_state = tx.init(state)
    batch = make_batch(cfg.arch, batch_size, seq, cfg.vocab_size)
    step = make_step(graphdef, tx)
    t0 = time.perf_counter()
    lowered = step.lower(state, opt_state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    row = {"lower": t1 - t0, "compile": t2 - t1, "total": t2 - t0,
           "n_params": int(sum(x.size for x in jax.tree.leaves(state)))}
    if run_step:  # one real step so a broken program cannot hide behind a fast compile
        _, _, loss = compiled(state, opt_state, batch)
        row["loss"] = float(loss)
    return row


def machine_info() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import flax
    import jaxlib
    return [
        f"- CPU: {cpu}; os.cpu_count()={os.cpu_count()}, usable cores={usable} (shared with other users)",
        f"- platform: {platform.platform()}, python {platform.python_version()}",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}",
        f"- devices: {jax.devices()}",
    ]


def sweep(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["decoder", "encdec"])
    p.add_argument("--layers", nargs="+", type=int, default=[2, 12, 24])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3, help="repeat the sweep N times, keep each cell's minimum")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "compile_time.md"))
    args = p.parse_args(argv)

    command = "python experiments/compile_time.py" + ("" if argv is None and len(sys.argv) == 1
                                                      else " " + " ".join(sys.argv[1:] if argv is None else argv))
    load_before = os.getloadavg()
    # warm-up: the first jit in a process pays one-off costs (XLA/MLIR initialisation) that would
    # otherwise inflate whichever cell runs first; compile a tiny step of every arch/mode once.
    for arch in args.archs:
        for scan in (True, False):
            measure(ModelConfig(arch=arch, vocab_size=64, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                                max_len=8, scan_layers=scan), 2, 8, run_step=False)
    cells = [(arch, scan, n) for arch in args.archs for scan in (True, False) for n in args.layers]
    results: dict[tuple[str, bool, int], dict] = {}
    t_start = time.perf_counter()
    # repeats are interleaved (whole sweep, then again in reverse order) so that load from other
    # users of a shared machine spreads over all cells instead of hitting one; keep the minimum.
    for rep in range(args.repeats):
        for cell in (cells if rep % 2 == 0 else cells[::-1]):
            arch, scan, n = cell
            cfg = ModelConfig(arch=arch, vocab_size=args.vocab, d_model=args.d_model, n_heads=args.n_heads,
                              d_ff=args.d_ff, n_layers=n, max_len=args.seq, scan_layers=scan)
            r = measure(cfg, args.batch, args.seq, run_step=rep == 0)
            print(f"[{rep + 1}/{args.repeats}] {arch:8s} {'scan' if scan else 'loop'} L={n:3d}: "
                  f"lower {r['lower']:7.2f}s  compile {r['compile']:7.2f}s  total {r['total']:7.2f}s"
                  + (f"  loss {r['loss']:.3f}" if "loss" in r else ""), flush=True)
            best = results.get(cell)
            if best is None:
                results[cell] = best = {**r, "all": []}
            elif r["total"] < best["total"]:
                best.update(lower=r["lower"], compile=r["compile"], total=r["total"])
            best["all"].append(r["total"])
    wall = time.perf_counter() - t_start
    load_after = os.getloadavg()

    lo, hi = min(args.layers), max(args.layers)
    lines = [
        "| arch | layers/stack | mode | params | lower (s) | compile (s) | lower+compile (s) | all repeats (s) |",
        "|------|-------------:|------|-------:|----------:|------------:|------------------:|-----------------|",
    ]
    for (arch, scan, n), r in sorted(results.items(), key=lambda kv: cells.index(kv[0])):
        lines.append(f"| {arch} | {n} | {'scan' if scan else 'loop'} | {r['n_params'] / 1e6:.2f}M | "
                     f"{r['lower']:.2f} | {r['compile']:.2f} | {r['total']:.2f} | "
                     + ", ".join(f"{t:.2f}" for t in r["all"]) + " |")
    lines += ["", f"Ratio {hi}/{lo} layers (lower+compile; XLA compile only in brackets):", "",
              f"| arch | scan {hi}/{lo} | loop {hi}/{lo} | scan ≤ 1.5× target |",
              "|------|------:|------:|:---:|"]
    for arch in args.archs:
        ratio = {}
        for scan in (True, False):
            a, b = results[(arch, scan, hi)], results[(arch, scan, lo)]
            ratio[scan] = (a["total"] / b["total"], a["compile"] / b["compile"])
        ok = "yes" if ratio[True][0] <= 1.5 else "NO"
        lines.append(f"| {arch} | {ratio[True][0]:.2f}× ({ratio[True][1]:.2f}×) | "
                     f"{ratio[False][0]:.2f}× ({ratio[False][1]:.2f}×) | {ok} |")
    table = "\n".join(lines)
    print()
    print(table)

    doc = [
        "# Compile time of one training step vs depth",
        "",
        "Training step = `nnx.merge` → logits → mean token cross-entropy → `jax.value_and_grad` → "
        "`optax.adamw` update, jitted as one function over the `nnx.split` state. "
        f"d_model={args.d_model}, n_heads={args.n_heads}, d_ff={args.d_ff}, vocab={args.vocab}, "
        f"seq={args.seq} (encdec: encoder and decoder both {args.seq}), batch={args.batch}, "
        "float32, learned positions, pre-LayerNorm, GELU. For encdec the layer count is per stack "
        "(encoder and decoder each). One untimed tiny warm-up compile per arch/mode first; "
        "each cell uses a fresh `jax.jit` function (no in-process cache hits); "
        f"minimum over {args.repeats} interleaved measurement(s) (the sweep is repeated, alternating "
        "order). `lower` = trace + lower to StableHLO, "
        "`compile` = XLA compile.",
        "",
        f"Command: `{command}`",
        "",
        "Machine:",
        "",
        *machine_info(),
        f"- load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; sweep wall time {wall:.0f}s",
        "",
        table,
        "",
        "Reading the numbers: the machine is shared (see the load average), so single measurements vary by up to ~4× (last column); the minimum over repeats is the least-disturbed estimate and the ratios use it. The loop's cost grows with depth because every layer is traced, lowered and optimised separately (forward and backward); the scan compiles one layer body regardless of depth.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(doc))
    print(f"\nwrote {out}")


def main(argv: list[str] | None = None) -> None:
    with persistent_cache_off():  # measure real compilations, never reads of an on-disk cache
        sweep(argv)


if __name__ == "__main__":
    main()
