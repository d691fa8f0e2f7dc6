"""Shared by tests/test_scaleout.py: the same 20 training steps on one device (in the pytest
process) or on a mesh of simulated devices (``python tests/scaleout_worker.py OUT.json`` in a
subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=8).

The subprocess runs, for every architecture: data parallel on 8x1x1, FSDP on 4x2x1 (saving an
orbax checkpoint at step 10), then restores that checkpoint onto the 8x1x1 mesh and continues to
step 20. It writes losses, parameter / optimizer-state shardings and config errors as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ARCHS = ["encoder", "decoder", "prefix_lm", "encdec"]
STEPS, SAVE_AT, BATCH, SEQ = 20, 10, 16, 24


def setup(arch: str):
    from flax import nnx

    from archcmp.model.config import ModelConfig
    from archcmp.data import BatchIterator, make_formatter, make_task
    from archcmp.model.models import build_model
    from archcmp.training.optim import make_optimizer
    from archcmp.training.settings import OptimSettings
    from archcmp.training.steps import split_microbatches

    task = make_task("addition", digits=[1, 3])
    fmt = make_formatter(arch, SEQ, SEQ if arch == "encdec" else None, objective="task",
                         vocab_size=task.tokenizer.vocab_size)
    data = BatchIterator(task, "train", 0, BATCH, fmt)
    batches = [split_microbatches(next(data), 1) for _ in range(STEPS)]
    cfg = ModelConfig(arch=arch, vocab_size=task.tokenizer.vocab_size, d_model=32, n_heads=4, d_ff=64, n_layers=2,
                      max_len=SEQ, pos_encoding="rope", activation="swiglu" if arch == "decoder" else "gelu")
    graphdef, params = nnx.split(build_model(cfg, 0))
    opt = OptimSettings(lr=3e-3, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, warmup_steps=5, min_lr_ratio=0.1,
                        clip_norm=1.0)
    tx = make_optimizer(opt, STEPS)
    return graphdef, params, tx, batches


def train_steps(arch: str, place, *, first: int = 0, state=None, step_fn=None, save_dir=None):
    """Steps ``first+1 .. STEPS`` on ``place``; returns (losses, state, step_fn)."""
    from archcmp.training.checkpoint import Checkpointer
    from archcmp.training.steps import make_train_step

    graphdef, params, tx, batches = setup(arch)
    if state is None:
        state = place.put({"params": params, "opt_state": tx.init(params)})
    if step_fn is None:
        step_fn = place.wrap_train(make_train_step(graphdef, tx, 1, place.train_jit_kwargs(state)))
    losses = []
    for i in range(first, STEPS):
        state, m = step_fn(state, batches[i], None)
        losses.append(float(m["train_loss"]))
        if save_dir is not None and i + 1 == SAVE_AT:
            with Checkpointer(save_dir) as ckpt:
                ckpt.save(SAVE_AT, state, {"step": SAVE_AT}, force=True)
    return losses, state, step_fn


def fresh_state(arch: str, place):
    graphdef, params, tx, _ = setup(arch)
    return place.put({"params": params, "opt_state": tx.init(params)})


def layout(state) -> dict:
    """path -> [global shape, spec of the param, shape of one shard, spec of Adam's mu]."""
    import jax

    from archcmp.distributed.sharding import describe_shardings

    params = state["params"]
    mu = next(s.mu for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu"))
    specs = describe_shardings(jax.tree.map(lambda x: x.sharding, params))
    mu_specs = describe_shardings(jax.tree.map(lambda x: x.sharding, mu))
    out = {}
    for (path, spec), x in zip(specs.items(), jax.tree.leaves(params)):
        out[path] = [list(x.shape), spec, list(x.addressable_shards[0].data.shape), mu_specs[path],
                     len(x.sharding.device_set)]
    return out


def main(out_path: str) -> None:
    from archcmp.distributed import hosts

    hosts.start(hosts.DeviceSettings(xla_flags=("--xla_cpu_enable_fast_math=false",)), hosts.DistributedSettings())
    import jax

    from archcmp.training.checkpoint import Checkpointer
    from archcmp.training.settings import ConfigError
    from archcmp.distributed.sharding import MeshSettings, make_placement

    result: dict = {"n_devices": len(jax.devices()), "xla_flags": os.environ.get("XLA_FLAGS", ""), "archs": {},
                    "errors": {}}

    def placement(**mesh):
        return make_placement(MeshSettings(**mesh), batch_size=BATCH, grad_accum=1, eval_batch_size=BATCH)

    dp, fsdp = placement(data=8), placement(data=4, fsdp=2)
    for kwargs, key in [(dict(data=3), "mesh"), (dict(data=8), "batch")]:
        try:
            make_placement(MeshSettings(**kwargs), batch_size=12, grad_accum=1, eval_batch_size=BATCH)
        except ConfigError as err:
            result["errors"][key] = str(err)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            r = result["archs"][arch] = {}
            r["dp"], state, dp_step = train_steps(arch, dp)
            r["dp_layout"] = layout(state)
            ckpt_dir = Path(tmp) / arch
            r["fsdp"], state, _ = train_steps(arch, fsdp, save_dir=ckpt_dir)
            r["fsdp_layout"] = layout(state)
            # The 4x2 checkpoint onto the 8x1 mesh: the restore target carries the new shardings.
            with Checkpointer(ckpt_dir) as ckpt:
                restored, meta = ckpt.restore(target=fresh_state(arch, dp))
            r["restored_layout"] = layout(restored)
            r["resumed"], _, _ = train_steps(arch, dp, first=int(meta["step"]), state=restored, step_fn=dp_step)
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(sys.argv[1])
