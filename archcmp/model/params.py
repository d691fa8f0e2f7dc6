"""Parameters and their plumbing, shared by every component: creation with logical axis names (for
sharding), the cast to the compute dtype, and dropout.

Shapes: B batch, T length, D d_model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from archcmp.model.config import ModelConfig

Array = jax.Array


def logical_param(value: Array, axes: tuple[str, ...]) -> nnx.Param:
    """A parameter tagged with one logical axis name per dimension (``out_sharding`` metadata).

    The names (vocab, embed, heads, kv, qkv, mlp, gate, norm, pos, rel_buckets; ``layers`` is added
    by the scanned stack) are only metadata: :mod:`archcmp.distributed.sharding` maps them to mesh axes through
    the configured rules. ``eager_sharding=False``: nothing is placed when the parameter is created.
    """
    assert len(axes) == value.ndim, (axes, value.shape)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def init_param(rngs: nnx.Rngs, shape: tuple[int, ...], cfg: ModelConfig, axes: tuple[str, ...],
           std: float | None = None) -> nnx.Param:
    std = cfg.init_std if std is None else std
    init = jax.random.normal(rngs.params(), shape, jnp.float32) * std
    return logical_param(init.astype(jnp.dtype(cfg.param_dtype)), axes)


def cast_param(p: nnx.Param, cfg: ModelConfig) -> Array:
    return p[...].astype(jnp.dtype(cfg.dtype))


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; identity when ``key`` is None (evaluation) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
