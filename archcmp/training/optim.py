"""The optimizer: AdamW with linear warmup, cosine decay and global-norm clipping."""
from __future__ import annotations

import jax
import optax

from archcmp.training.settings import OptimSettings


def schedule(opt: OptimSettings, total_steps: int) -> optax.Schedule:
    warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=opt.lr * opt.min_lr_ratio)


def decay_mask(params):
    """Weight decay on matrices only (not on norm scales, biases or 1-D tables)."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(opt: OptimSettings, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if opt.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(optax.adamw(schedule(opt, total_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
