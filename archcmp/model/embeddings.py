"""Token embeddings and positional information: the embedding table (tied output projection),
additive position tables (learned, sinusoidal), attention biases (T5 relative buckets, ALiBi) and
rotary embeddings (RoPE, applied inside attention).

Shapes: B batch, T query length, S key length, D d_model, H heads, K head size, V vocabulary.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from archcmp.model.config import ModelConfig
from archcmp.model.params import Array, cast_param, init_param


class Embed(nnx.Module):
    """Token embedding [V, D]; ``attend`` is the tied output projection."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.table = init_param(rngs, (cfg.vocab_size, cfg.d_model), cfg, ("vocab", "embed"), std=1.0 / math.sqrt(cfg.d_model))
        if cfg.type_vocab_size:
            self.type_table = init_param(rngs, (cfg.type_vocab_size, cfg.d_model), cfg, ("token_types", "embed"))

    def __call__(self, ids: Array, token_types: Array | None = None) -> Array:
        # An id outside [0, V) gives a NaN row instead of JAX's silent clamp to the last row, so under
        # jit (where ids cannot be checked on the host) a bad id shows up as a NaN loss.
        x = jnp.take(cast_param(self.table, self.cfg), ids, axis=0, mode="fill", fill_value=jnp.nan)  # [B, T] -> [B, T, D]
        if self.cfg.type_vocab_size:  # BERT's segment A/B embedding; type 0 when not given
            types = jnp.zeros_like(ids) if token_types is None else token_types
            x = x + jnp.take(cast_param(self.type_table, self.cfg), types, axis=0, mode="fill", fill_value=jnp.nan)
        return x

    def attend(self, x: Array) -> Array:
        return jnp.einsum("btd,vd->btv", x, cast_param(self.table, self.cfg))  # [B, T, V]


def sinusoids(positions: Array, d_model: int) -> Array:
    """Sin/cos features of Vaswani et al. at any positions.  [...] -> [..., D]."""
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    angles = positions[..., None].astype(jnp.float32) * freq  # [..., D/2]
    return rearrange(jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1), "... f two -> ... (f two)")


def sinusoidal_table(max_len: int, d_model: int) -> Array:
    """Fixed sin/cos table of Vaswani et al.  -> [max_len, D]."""
    return sinusoids(jnp.arange(max_len), d_model)


def alibi_slopes(n_heads: int) -> Array:
    """ALiBi head slopes (Press et al. 2022).  -> [H] float32.

    For H a power of two: the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8) (8 heads:
    1/2, 1/4, ..., 1/256). Otherwise, as the paper prescribes, the slopes of the largest power of
    two n < H, then every other slope of 2n until H are filled.
    """
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    n = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(n) + geometric(2 * n)[0::2][: n_heads - n]
    return jnp.asarray(slopes, jnp.float32)


def alibi_bias(positions: Array, key_positions: Array, n_heads: int) -> Array:
    """ALiBi's linear distance penalty -slope_h * |i - j|.  [B, Tq], [B, Tk] -> [B, H, Tq, Tk].

    The paper defines it for causal attention (j <= i, penalty slope * (i - j)). We use the
    symmetric |i - j| everywhere: on a causal mask it is the same number for every visible key, and
    for the bidirectional stacks (encoder, the prefix of a prefix-LM, the encdec encoder) it penalises
    keys on both sides alike. Cross-attention gets no bias (encoder and decoder positions differ).
    """
    dist = jnp.abs(positions[:, :, None] - key_positions[:, None, :]).astype(jnp.float32)  # [B, Tq, Tk]
    return -alibi_slopes(n_heads)[None, :, None, None] * dist[:, None]


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotate feature pairs by position-dependent angles.  x [B, T, H, K], positions [B, T].

    q·k of two rotated vectors depends only on the offset between their positions.
    """
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [K/2]
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, K/2]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)


def relative_buckets(offset: Array, n_buckets: int, max_distance: int, causal: bool = False) -> Array:
    """T5 bucketing of key-minus-query offsets: exact near, log-spaced far.

    Bidirectional: half of the buckets for keys before the query, half for keys after. ``causal``
    (T5's decoder): every bucket for keys at or before the query; later keys share bucket 0.
    """
    if causal:
        half, bucket, dist = n_buckets, 0, jnp.maximum(-offset, 0)
    else:
        half = n_buckets // 2
        bucket = jnp.where(offset > 0, half, 0)
        dist = jnp.abs(offset)
    exact = half // 2
    is_small = dist < exact
    log_ratio = jnp.log(jnp.maximum(dist, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (half - exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return bucket + jnp.where(is_small, dist, large)


class Positions(nnx.Module):
    """Positional information of one stack: additive table (learned / sinusoidal) or an attention
    bias (T5 relative buckets, ALiBi); RoPE lives in attention and 'none' adds nothing.  ``causal``:
    the stack's relative bias uses one-sided buckets (``cfg.rel_causal`` on a causal stack).

    Longer inputs than the training length (``cfg.max_len``): only the learned table refuses them
    (no trained row exists); sinusoids, RoPE angles, relative buckets (far offsets share the last
    bucket) and ALiBi distances are computed for any position."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, causal: bool = False):
        self.cfg, self.causal = cfg, causal
        if cfg.pos_encoding == "learned":
            self.table = init_param(rngs, (cfg.max_len, cfg.d_model), cfg, ("pos", "embed"))
        elif cfg.pos_encoding == "relative":
            self.rel = init_param(rngs, (cfg.rel_buckets, cfg.n_heads), cfg, ("rel_buckets", "heads"), std=0.1)

    def add(self, x: Array, positions: Array) -> Array:
        """Add absolute positions to embeddings.  x [B, T, D], positions [B, T]."""
        if self.cfg.pos_encoding == "learned" and x.shape[1] > self.cfg.max_len:
            # Shapes are static, so this fires while tracing, before anything compiles
            # (an out-of-range table lookup would otherwise fill silently with NaN).
            raise ValueError(f"model.max_len={self.cfg.max_len}: sequence of {x.shape[1]} tokens is longer "
                             "than the position table (model.pos_encoding='learned' has no row past max_len)")
        if self.cfg.pos_encoding == "learned":
            return x + jnp.take(cast_param(self.table, self.cfg), positions, axis=0)
        if self.cfg.pos_encoding == "sinusoidal":
            return x + sinusoids(positions, self.cfg.d_model).astype(x.dtype)
        return x

    def bias(self, positions: Array, key_positions: Array | None = None) -> Array | None:
        """Relative attention bias shared by all layers.  -> [B, H, Tq, Tk] or None.

        ``key_positions`` [B, Tk] defaults to ``positions`` (self-attention over the same tokens);
        incremental decoding passes the positions of the cached keys.
        """
        if self.cfg.pos_encoding not in ("relative", "alibi"):
            return None
        key_positions = positions if key_positions is None else key_positions
        if self.cfg.pos_encoding == "alibi":
            return alibi_bias(positions, key_positions, self.cfg.n_heads)
        offset = key_positions[:, None, :] - positions[:, :, None]  # [B, Tq, Tk], key - query
        buckets = relative_buckets(offset, self.cfg.rel_buckets, self.cfg.rel_max_distance, self.causal)
        values = jnp.take(self.rel[...].astype(jnp.float32), buckets, axis=0)  # [B, Tq, Tk, H]
        return jnp.transpose(values, (0, 3, 1, 2))
