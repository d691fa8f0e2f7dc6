"""Attention: the softmax kernel :func:`attend` (masks from :mod:`archcmp.model.masks` become
logit biases here) and the multi-head :class:`Attention` module, self or cross, with a KV cache
for incremental decoding.

Shapes: B batch, T query length, S key length, D d_model, H heads, G key/value heads, K head size.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from archcmp.model.attention_impls import fused_attend
from archcmp.model.config import ModelConfig
from archcmp.model.embeddings import apply_rope
from archcmp.model.params import Array, cast_param, init_param, logical_param

NEG_INF = -1e30  # finite, so fully masked (padding) rows stay NaN-free


def attend(q: Array, k: Array, v: Array, mask: Array, bias: Array | None = None,
           scale: bool = True) -> tuple[Array, Array]:
    """Softmax attention.  q [B,T,H,K], k/v [B,S,H,K], mask [B,1,T,S] bool -> ([B,T,H,K], probs [B,H,T,S]).

    ``scale=False``: scores are plain q·k (T5)."""
    scores = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    scores = jnp.where(mask, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)  # [B, H, T, S] float32
    out = jnp.einsum("bhts,bshk->bthk", probs.astype(v.dtype), v)
    return out, probs


class Attention(nnx.Module):
    """Multi-head attention, self (fused QKV kernel) or cross (Q from x, fused KV from memory).

    KV cache (incremental decoding): pass ``cache={"k", "v"}`` ([B, S_max, H, K] each). Self-attention
    writes this call's keys/values at slots ``cache_index .. cache_index+T-1`` and attends over all
    S_max slots (the mask hides empty ones); cross-attention reads the memory's keys/values from the
    cache (see :meth:`memory_kv`) instead of projecting ``memory``. With a cache the call returns
    ``(y, probs, new_cache)``; without, ``(y, probs)`` as before.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, cross: bool = False):
        self.cfg, self.cross = cfg, cross
        D, H, G, K = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
        # Self-attention fuses q, k, v in one kernel unless grouped-query attention gives k/v fewer
        # heads (G < H); then it has cross-attention's layout, q [D,H,K] and kv [D,2,G,K].
        self.split = cross or not cfg.fused_qkv
        names = ("q", "kv") if self.split else ("qkv",)
        if self.split:
            self.q = init_param(rngs, (D, H, K), cfg, ("embed", "heads", "kv"))
            self.kv = init_param(rngs, (D, 2, G, K), cfg, ("embed", "qkv", "heads", "kv"))
        else:
            self.qkv = init_param(rngs, (D, 3, H, K), cfg, ("embed", "qkv", "heads", "kv"))
        self.out = init_param(rngs, (H, K, D), cfg, ("heads", "kv", "embed"))
        if cfg.use_bias:  # one bias per kernel, shaped like its output
            for name in names:
                shape = getattr(self, name).shape[1:]
                axes = ("qkv", "heads", "kv")[-len(shape):]
                setattr(self, f"{name}_bias", logical_param(jnp.zeros(shape, jnp.dtype(cfg.param_dtype)), axes))
            self.out_bias = logical_param(jnp.zeros((D,), jnp.dtype(cfg.param_dtype)), ("embed",))

    def _project(self, x: Array, name: str, spec: str) -> Array:
        """x @ kernel ``name`` (+ its bias).  ``spec`` is the einsum of the kernel."""
        y = jnp.einsum(spec, x, cast_param(getattr(self, name), self.cfg))
        if self.cfg.use_bias:
            bias = cast_param(getattr(self, f"{name}_bias"), self.cfg)
            y = y + (bias[:, None, None] if spec.endswith("->nbthk") else bias)
        return y

    def _kv(self, x: Array) -> tuple[Array, Array]:
        """Keys and values of the split layout, each K/V head repeated for its group of query heads.
        x [B,S,D] -> k, v [B,S,H,K]."""
        k, v = jnp.unstack(self._project(x, "kv", "btd,dnhk->nbthk"), axis=0)
        rep = self.cfg.n_heads // self.cfg.kv_heads
        if rep > 1:  # K/V head g serves query heads g*rep .. g*rep+rep-1
            k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
        return k, v

    def memory_kv(self, memory: Array) -> dict[str, Array]:
        """Cross-attention keys/values of the encoder memory, computed once per sequence.
        memory [B,S,D] -> {"k", "v"} [B,S,H,K]."""
        k, v = self._kv(memory)
        return {"k": k, "v": v}

    def __call__(self, x: Array, mask: Array, positions: Array | None = None, memory: Array | None = None,
                 bias: Array | None = None, cache: dict[str, Array] | None = None,
                 cache_index: Array | None = None, need_probs: bool = True):
        """x [B,T,D] (memory [B,S,D] for cross) -> ([B,T,D], probs [B,H,T,S]) (+ new cache).

        ``need_probs=False`` lets ``cfg.attention_impl`` pick a path that returns probs None."""
        cfg = self.cfg
        new_cache = None
        if self.cross:
            q = self._project(x, "q", "btd,dhk->bthk")
            kv = self.memory_kv(memory) if cache is None else cache
            k, v = kv["k"], kv["v"]
            new_cache = cache
        else:
            if self.split:
                q, (k, v) = self._project(x, "q", "btd,dhk->bthk"), self._kv(x)
            else:
                q, k, v = jnp.unstack(self._project(x, "qkv", "btd,dnhk->nbthk"), axis=0)
            if cfg.pos_encoding == "rope":
                q = apply_rope(q, positions, cfg.rope_theta)
                k = apply_rope(k, positions, cfg.rope_theta)
            if cache is not None:
                at = (0, cache_index, 0, 0)
                k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at)
                v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)
                new_cache = {"k": k, "v": v}
        if need_probs or cfg.attention_impl == "explicit":
            y, probs = attend(q, k, v, mask, bias, scale=cfg.scale_attention)
        else:
            y, probs = fused_attend(cfg.attention_impl, q, k, v, mask, bias, cfg.scale_attention), None
        y = jnp.einsum("bthk,hkd->btd", y, cast_param(self.out, cfg))
        if cfg.use_bias:
            y = y + cast_param(self.out_bias, cfg)
        return (y, probs) if cache is None else (y, probs, new_cache)
