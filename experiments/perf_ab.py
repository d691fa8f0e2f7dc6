"""A/B of training-step variants in one process, alternating rounds (the method of bench.md's notes).

    python experiments/perf_ab.py --arch decoder --size 3M --variants explicit blocked xla --rounds 4

Each variant is a ``name`` from VARIANTS: model-config changes on top of archcmp-bench's shape of
that arch and size. Prints each variant's median step time over the rounds, its ratio to the first
variant (>1 = faster), and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

VARIANTS = {
    "explicit": {"attention_impl": "explicit"},
    "blocked": {"attention_impl": "blocked"},
    "xla": {"attention_impl": "xla"},
    "dots": {"remat": "dots"},
    "blocked32": {"attention_impl": "blocked", "_block": 32},
    "blocked128": {"attention_impl": "blocked", "_block": 128},
    "blocked_dots": {"attention_impl": "blocked", "remat": "dots"},
    "xla_dots": {"attention_impl": "xla", "remat": "dots"},
    "noscan": {"scan_layers": False},
    "explicit_noscan": {"attention_impl": "explicit", "scan_layers": False},
    "noscan_dots": {"scan_layers": False, "remat": "dots"},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="decoder")
    p.add_argument("--size", default="3M")
    p.add_argument("--variants", nargs="+", default=["explicit", "blocked", "xla"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()

    from archcmp.bench.common import make_batch, model_config
    from archcmp.bench.training import OursTrainer

    load0 = os.getloadavg()
    base = model_config(args.arch, args.size, 1024, 256)
    batch = make_batch(args.arch, 8, 256, 1024, seed=1)
    trainers = {}
    from archcmp.model import attention_impls

    default_block = attention_impls.BLOCK
    for name in args.variants:
        changes = dict(VARIANTS[name])
        attention_impls.BLOCK = changes.pop("_block", default_block)  # read while the step is traced
        t = OursTrainer(base.replace(**changes), batch)
        attention_impls.BLOCK = default_block
        t.step()
        trainers[name] = t
        print(f"{name}: compile {t.compile_seconds:.1f} s, XLA memory {t.xla_memory}", flush=True)
    times: dict[str, list[float]] = {n: [] for n in trainers}
    names = list(trainers)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                trainers[name].step()
                times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times[names[0]])
    print(f"{args.arch} {args.size}, {args.rounds} rounds x {args.steps} steps; load {load0} -> {os.getloadavg()}")
    for name in names:
        med = statistics.median(times[name])
        print(f"  {name:14s} median {med:.3f} s  speed vs {names[0]}: {ref / med:.3f}x  "
              f"loss {trainers[name].last_loss:.4f}  all {[round(x, 2) for x in times[name]]}")


if __name__ == "__main__":
    main()
