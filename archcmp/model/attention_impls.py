"""Implementations of softmax attention that do not return the probabilities (training paths).

``model.attention_impl`` picks one (see :func:`fused_attend`); ``explicit`` (the default) stays
:func:`archcmp.model.attention.attend`, which also returns the ``[B, H, T, S]`` probabilities the probes
read. The others give the same outputs and gradients (``tests/test_attention_impls.py``):

* ``blocked``: flash-style attention in plain JAX. Keys are taken in blocks of ``block`` columns
  with an online (running max / running sum) softmax, so no ``[B, H, T, S]`` score or probability
  tensor exists at once, in the forward or (custom VJP, recomputing each block's probabilities
  from the saved row max and sum) in the backward pass.
* ``xla``: ``jax.nn.dot_product_attention`` with its default implementation choice: the XLA
  graph on CPU and TPU, cuDNN's fused kernel on a GPU when the shapes and dtypes allow.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``; GPU only (the gpu preset).

Shapes: q [B,T,H,K], k/v [B,S,H,K], mask [B,1,T,S] bool, bias [B,H,T,S] float or None.
Masked scores are set to the same finite ``NEG_INF`` as the explicit path, so a fully masked
(padding) row gives the same uniform average in every implementation, never NaN.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -1e30  # the value archcmp.model.attention uses; repeated so this module imports nothing from it
IMPLS = ("explicit", "blocked", "xla", "cudnn")
BLOCK = 64  # key columns per block of the blocked path


def _scores(q: Array, k: Array, mask: Array, bias: Array | None, scale: float) -> Array:
    """Masked, scaled, biased f32 scores of one key block.  -> [B, H, T, s]."""
    s = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32) * scale
    if bias is not None:
        s = s + bias
    return jnp.where(mask, s, NEG_INF)


def _blocks(S: int, block: int) -> list[slice]:
    return [slice(i, min(i + block, S)) for i in range(0, S, block)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, mask, bias, scale, block):
    return _flash_fwd(q, k, v, mask, bias, scale, block)[0]


def _flash_fwd(q, k, v, mask, bias, scale, block):
    B, T, H, _ = q.shape
    m = jnp.full((B, H, T, 1), NEG_INF, jnp.float32)  # running row max
    l = jnp.zeros((B, H, T, 1), jnp.float32)  # running sum of exp(score - m)
    acc = jnp.zeros(q.shape, jnp.float32)  # [B, T, H, K] running weighted sum of values
    for cols in _blocks(k.shape[1], block):  # static: a handful of blocks at T = 256
        s = _scores(q, k[:, cols], mask[..., cols], None if bias is None else bias[..., cols], scale)
        m_new = jnp.maximum(m, s.max(-1, keepdims=True))
        p = jnp.exp(s - m_new)  # [B, H, T, s]
        corr = jnp.exp(m - m_new)
        l = l * corr + p.sum(-1, keepdims=True)
        pv = jnp.einsum("bhts,bshk->bthk", p.astype(v.dtype), v[:, cols]).astype(jnp.float32)
        acc = acc * jnp.transpose(corr, (0, 2, 1, 3)) + pv
        m = m_new
    out = (acc / jnp.transpose(l, (0, 2, 1, 3))).astype(q.dtype)
    # m and 1/l kept apart (not m + log l): in a fully masked row m = NEG_INF swallows log l in f32
    return out, (q, k, v, mask, bias, out, m, 1.0 / l)


def _flash_bwd(scale, block, res, g):
    q, k, v, mask, bias, out, m, inv_l = res
    # D_t = sum_k dO_tk O_tk: the softmax-Jacobian term of every row  -> [B, H, T, 1]
    delta = jnp.einsum("bthk,bthk->bht", g.astype(jnp.float32), out.astype(jnp.float32))[..., None]
    dq = jnp.zeros(q.shape, jnp.float32)
    dks, dvs, dbs = [], [], []
    for cols in _blocks(k.shape[1], block):
        kb, vb = k[:, cols], v[:, cols]
        s = _scores(q, kb, mask[..., cols], None if bias is None else bias[..., cols], scale)
        p = jnp.exp(s - m) * inv_l  # [B, H, T, s]: this block's probabilities, recomputed
        dvs.append(jnp.einsum("bhts,bthk->bshk", p.astype(g.dtype), g))
        dp = jnp.einsum("bthk,bshk->bhts", g, vb).astype(jnp.float32)
        ds = jnp.where(mask[..., cols], p * (dp - delta), 0.0)  # gradient of the (biased) score; masked: none
        dbs.append(ds)
        ds_q = (ds * scale).astype(q.dtype)
        dq = dq + jnp.einsum("bhts,bshk->bthk", ds_q, kb).astype(jnp.float32)
        dks.append(jnp.einsum("bhts,bthk->bshk", ds_q, q))
    dk = jnp.concatenate(dks, axis=1).astype(k.dtype)
    dv = jnp.concatenate(dvs, axis=1).astype(v.dtype)
    dbias = None
    if bias is not None:  # the bias broadcasts over nothing here: [B, H, T, S] like the scores
        dbias = jnp.concatenate(dbs, axis=-1).astype(bias.dtype)
    return dq.astype(q.dtype), dk, dv, None, dbias


_flash.defvjp(_flash_fwd, _flash_bwd)


def blocked_attend(q: Array, k: Array, v: Array, mask: Array, bias: Array | None = None,
                   scale: bool = True, block: int | None = None) -> Array:
    """Flash-style attention (see the module docstring); ``block`` defaults to :data:`BLOCK`.  -> [B, T, H, K]."""
    block = BLOCK if block is None else block
    factor = 1.0 / math.sqrt(q.shape[-1]) if scale else 1.0
    B, T, H, _ = q.shape
    mask = jnp.broadcast_to(mask, (B, 1, T, k.shape[1]))
    if bias is not None:
        bias = jnp.broadcast_to(bias.astype(jnp.float32), (B, H, T, k.shape[1]))
    return _flash(q, k, v, mask, bias, factor, block)


def xla_attend(q: Array, k: Array, v: Array, mask: Array, bias: Array | None = None,
               scale: bool = True, implementation: str | None = None) -> Array:
    """``jax.nn.dot_product_attention`` on our layout ([B,T,H,K] is its BTNH).  -> [B, T, H, K]."""
    factor = 1.0 / math.sqrt(q.shape[-1]) if scale else 1.0
    bias = None if bias is None else bias.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=factor, implementation=implementation)


def fused_attend(impl: str, q: Array, k: Array, v: Array, mask: Array, bias: Array | None = None,
                 scale: bool = True) -> Array:
    """The non-explicit implementations by name (``model.attention_impl``).  -> [B, T, H, K]."""
    if impl == "blocked":
        return blocked_attend(q, k, v, mask, bias, scale)
    if impl == "xla":
        return xla_attend(q, k, v, mask, bias, scale)
    if impl == "cudnn":
        return xla_attend(q, k, v, mask, bias, scale, implementation="cudnn")
    raise ValueError(f"model.attention_impl={impl!r}: choose one of {list(IMPLS)}")
