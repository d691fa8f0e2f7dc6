"""The shared components: one implementation each, used by all four architectures.

Shapes: B batch, T query length, S key length, D d_model, H heads, K head size, F d_ff,
V vocabulary, L layers.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from archcmp.model.attention_impls import fused_attend
from archcmp.model.config import ModelConfig

Array = jax.Array
NEG_INF = -1e30  # finite, so fully masked (padding) rows stay NaN-free
# ModelConfig.remat -> what the backward pass keeps of a layer (the batched attention matmuls
# are cheap to recompute and their [B, H, T, S] outputs are the largest residuals).
REMAT_POLICY = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                "full": jax.checkpoint_policies.nothing_saveable}


def _dtype(name: str):
    return jnp.dtype(name)


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
    return logical_param(init.astype(_dtype(cfg.param_dtype)), axes)


def cast_param(p: nnx.Param, cfg: ModelConfig) -> Array:
    return p[...].astype(_dtype(cfg.dtype))


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; identity when ``key`` is None (evaluation) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


# ---- embeddings and positions ------------------------------------------------------------
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


# ---- normalisation -----------------------------------------------------------------------
class Norm(nnx.Module):
    """LayerNorm (scale + bias) or RMSNorm (scale only), computed in float32."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.scale = logical_param(jnp.ones((cfg.d_model,), _dtype(cfg.param_dtype)), ("norm",))
        if cfg.norm == "layernorm":
            self.bias = logical_param(jnp.zeros((cfg.d_model,), _dtype(cfg.param_dtype)), ("norm",))

    def __call__(self, x: Array) -> Array:
        h = x.astype(jnp.float32)
        if self.cfg.norm == "layernorm":
            h = h - h.mean(-1, keepdims=True)
        h = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + self.cfg.norm_eps)
        h = h * self.scale[...].astype(jnp.float32)
        if self.cfg.norm == "layernorm":
            h = h + self.bias[...].astype(jnp.float32)
        return h.astype(x.dtype)


# ---- attention ---------------------------------------------------------------------------
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
                setattr(self, f"{name}_bias", logical_param(jnp.zeros(shape, _dtype(cfg.param_dtype)), axes))
            self.out_bias = logical_param(jnp.zeros((D,), _dtype(cfg.param_dtype)), ("embed",))

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


class MLP(nnx.Module):
    """Position-wise feed-forward: GELU/ReLU, or gated (SwiGLU / GeGLU)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        n_in = 2 if cfg.gated else 1
        self.wi = init_param(rngs, (cfg.d_model, n_in, cfg.d_ff), cfg, ("embed", "gate", "mlp"))
        self.wo = init_param(rngs, (cfg.d_ff, cfg.d_model), cfg, ("mlp", "embed"))
        if cfg.use_bias:
            self.wi_bias = logical_param(jnp.zeros((n_in, cfg.d_ff), _dtype(cfg.param_dtype)), ("gate", "mlp"))
            self.wo_bias = logical_param(jnp.zeros((cfg.d_model,), _dtype(cfg.param_dtype)), ("embed",))

    def __call__(self, x: Array) -> Array:
        h = jnp.einsum("btd,dnf->btnf", x, cast_param(self.wi, self.cfg))  # [B, T, n, F]: no transposed copy
        if self.cfg.use_bias:
            h = h + cast_param(self.wi_bias, self.cfg)
        if self.cfg.remat == "none":
            # Even without layer remat, the backward keeps only the activation's input (as torch's
            # fused GELU does), not every intermediate of the tanh formula: under the layer scan
            # those are three more [L, B, T, F] stacks.
            h = jax.checkpoint(_activation, static_argnums=(0,))(self.cfg.activation, h)
        else:
            h = _activation(self.cfg.activation, h)  # the layer's remat policy decides
        y = jnp.einsum("btf,fd->btd", h, cast_param(self.wo, self.cfg))
        return y + cast_param(self.wo_bias, self.cfg) if self.cfg.use_bias else y


def activation(act: str, x: Array) -> Array:
    """The non-gated activations: "gelu" (tanh approximation), "gelu_erf" (exact), "relu"."""
    if act == "relu":
        return jax.nn.relu(x)
    return jax.nn.gelu(x, approximate=act != "gelu_erf")


def _activation(act: str, h: Array) -> Array:
    """[B, T, n, F] -> [B, T, F]: GELU / ReLU of slot 0, or slot 0 gated by slot 1."""
    if act in ("gelu", "gelu_erf"):
        return activation(act, h[..., 0, :])
    if act == "relu":
        return jax.nn.relu(h[..., 0, :])
    if act == "swiglu":
        return jax.nn.silu(h[..., 0, :]) * h[..., 1, :]
    return jax.nn.gelu(h[..., 0, :]) * h[..., 1, :]  # geglu


class Block(nnx.Module):
    """Self-attention, optional cross-attention, MLP; each a residual sub-layer with pre- or post-norm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, cross: bool = False):
        self.cfg, self.has_cross = cfg, cross
        self.self_norm, self.self_attn = Norm(cfg), Attention(cfg, rngs)
        if cross:
            self.cross_norm, self.cross_attn = Norm(cfg), Attention(cfg, rngs, cross=True)
        if cfg.mlp:  # cfg.mlp=False: attention-only block
            self.mlp_norm, self.mlp = Norm(cfg), MLP(cfg, rngs)

    def _residual(self, x: Array, norm: Norm, fn, key: Array | None) -> tuple[Array, Array | None]:
        if self.cfg.norm_position == "pre":
            y, aux = fn(norm(x))
            return x + dropout(y, self.cfg.dropout, key), aux
        y, aux = fn(x)  # post-norm (original Transformer / GPT-1 / BERT)
        return norm(x + dropout(y, self.cfg.dropout, key)), aux

    def __call__(self, x, mask, positions, bias=None, memory=None, cross_mask=None, key=None,
                 cache=None, cache_index=None, need_probs=True):
        """x [B,T,D] -> (x [B,T,D], self probs [B,H,T,T], cross probs [B,H,T,S] or None).

        With ``cache={"self": {"k","v"}, "cross": {"k","v"} (cross blocks)}`` of this layer, a fourth
        element, the updated cache, is returned (see :class:`Attention`).
        """
        keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
        cache = {} if cache is None else cache
        new_cache = dict(cache)

        def self_fn(h):
            out = self.self_attn(h, mask, positions, bias=bias, cache=cache.get("self"), cache_index=cache_index,
                                 need_probs=need_probs)
            if "self" in cache:
                new_cache["self"] = out[2]
            return out[:2]

        x, self_p = self._residual(x, self.self_norm, self_fn, keys[0])
        cross_p = None
        if self.has_cross:
            x, cross_p = self._residual(
                x, self.cross_norm, lambda h: self.cross_attn(h, cross_mask, memory=memory, cache=cache.get("cross"),
                                                              need_probs=need_probs)[:2], keys[1])
        if self.cfg.mlp:
            x, _ = self._residual(x, self.mlp_norm, lambda h: (self.mlp(h), None), keys[2])
        return (x, self_p, cross_p, new_cache) if cache else (x, self_p, cross_p)


class Stack(nnx.Module):
    """L blocks with stacked parameters [L, ...], applied by ``lax.scan`` (compile time flat
    in depth) or by a Python loop over the same parameters (``cfg.scan_layers=False``)."""

    def __init__(self, cfg: ModelConfig, n_layers: int, rngs: nnx.Rngs, cross: bool = False, causal: bool = False):
        self.cfg, self.n_layers, self.cross = cfg, n_layers, cross
        self.positions = Positions(cfg, rngs, causal=causal and cfg.rel_causal)
        if cfg.embed_norm:
            self.embed_norm = Norm(cfg)

        @nnx.split_rngs(splits=n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r: nnx.Rngs) -> Block:
            return Block(cfg, r, cross=cross)

        self.blocks = make_blocks(rngs)
        self.final_norm = Norm(cfg) if cfg.norm_position == "pre" else None

    def embed_inputs(self, x: Array, positions: Array) -> Array:
        """The input of the first block: embedded tokens [B,T,D] + additive positions (+ ``embed_norm``)."""
        x = self.positions.add(x, positions)
        return self.embed_norm(x) if self.cfg.embed_norm else x

    def memory_kv(self, memory: Array) -> dict[str, Array]:
        """Cross-attention keys/values of every layer, for a KV cache.  memory [B,S,D] -> {"k","v"} [L,B,S,H,K]."""
        graphdef, params = nnx.split(self.blocks)
        return jax.vmap(lambda p: nnx.merge(graphdef, p).cross_attn.memory_kv(memory))(params)

    def __call__(self, x, mask, positions, memory=None, cross_mask=None, key=None,
                 return_attention: bool = False, return_hidden: bool = False,
                 cache=None, cache_index=None, key_positions=None):
        """x [B,T,D] (embedded tokens) -> (y [B,T,D], extras dict of per-layer stacks [L, ...]).

        Incremental decoding: ``cache={"self": {"k","v"}}`` (plus ``"cross"`` in a cross stack; from
        :meth:`memory_kv`), each ``[L, B, S_max, H, K]``, scanned over layers with the parameters.
        This call's tokens are written at slots ``cache_index..cache_index+T-1``; ``mask`` is then
        ``[B,1,T,S_max]`` and ``key_positions`` [B, S_max] the positions of the cached keys (for the
        relative bias). Returns ``(y, extras, new_cache)``.
        """
        x = self.embed_inputs(x, positions)
        bias = self.positions.bias(positions, key_positions)
        graphdef, params = nnx.split(self.blocks)
        keys = None if key is None else jax.random.split(key, self.n_layers)
        # Per-layer patterns (cfg.layer_patterns): mask is [P, B, 1, T, S], one per distinct pattern,
        # and each layer picks its own by a scanned pattern id.
        per_layer = mask.ndim == 5
        pattern_ids = jnp.asarray(self.cfg.layer_pattern_ids(self.n_layers), jnp.int32)

        def body(h, layer):
            layer_params, layer_key, layer_cache, pattern_id = layer
            block = nnx.merge(graphdef, layer_params)
            layer_mask = mask[pattern_id] if per_layer else mask
            res = block(h, layer_mask, positions, bias, memory, cross_mask, layer_key, layer_cache, cache_index,
                        need_probs=return_attention)
            h, self_p, cross_p = res[:3]
            out = {}
            if return_attention:
                out["self"] = self_p
                if cross_p is not None:
                    out["cross"] = cross_p
            if return_hidden:
                out["hidden"] = h
            if layer_cache is not None:
                out["cache"] = res[3]["self"]  # the cross part is read-only: not re-emitted
            return h, out

        if cache is None and self.cfg.remat != "none":
            # Training keeps less per layer and recomputes the rest in the backward pass: less
            # memory; on XLA:CPU "dots" ran 0.85-1.08x the speed of "none" (3M-20M; bench.md notes).
            body = jax.checkpoint(body, policy=REMAT_POLICY[self.cfg.remat])
        if self.cfg.scan_layers:
            x, extras = jax.lax.scan(body, x, (params, keys, cache, pattern_ids))
        else:
            outs = []
            for i in range(self.n_layers):
                layer = jax.tree.map(lambda a: a[i], (params, keys, cache, pattern_ids))
                x, out = body(x, layer)
                outs.append(out)
            extras = jax.tree.map(lambda *a: jnp.stack(a), *outs) if outs and outs[0] else {}
        if self.final_norm is not None:
            x = self.final_norm(x)
        if cache is None:
            return x, extras
        new_cache = dict(cache, self=extras.pop("cache"))
        return x, extras, new_cache
