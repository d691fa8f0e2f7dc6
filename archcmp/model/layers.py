"""The shared layers: one implementation each, used by all four architectures: normalisation, the
MLP, the residual block and the scanned stack of blocks. Attention is in
:mod:`archcmp.model.attention`, embeddings and positions in :mod:`archcmp.model.embeddings`,
parameter creation in :mod:`archcmp.model.params`.

Shapes: B batch, T query length, S key length, D d_model, H heads, K head size, F d_ff,
V vocabulary, L layers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from archcmp.model.attention import Attention
from archcmp.model.config import ModelConfig
from archcmp.model.embeddings import Positions
from archcmp.model.params import Array, cast_param, dropout, init_param, logical_param

# ModelConfig.remat -> what the backward pass keeps of a layer (the batched attention matmuls
# are cheap to recompute and their [B, H, T, S] outputs are the largest residuals).
REMAT_POLICY = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                "full": jax.checkpoint_policies.nothing_saveable}


# ---- normalisation -----------------------------------------------------------------------
class Norm(nnx.Module):
    """LayerNorm (scale + bias) or RMSNorm (scale only), computed in float32."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.scale = logical_param(jnp.ones((cfg.d_model,), jnp.dtype(cfg.param_dtype)), ("norm",))
        if cfg.norm == "layernorm":
            self.bias = logical_param(jnp.zeros((cfg.d_model,), jnp.dtype(cfg.param_dtype)), ("norm",))

    def __call__(self, x: Array) -> Array:
        h = x.astype(jnp.float32)
        if self.cfg.norm == "layernorm":
            h = h - h.mean(-1, keepdims=True)
        h = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + self.cfg.norm_eps)
        h = h * self.scale[...].astype(jnp.float32)
        if self.cfg.norm == "layernorm":
            h = h + self.bias[...].astype(jnp.float32)
        return h.astype(x.dtype)



class MLP(nnx.Module):
    """Position-wise feed-forward: GELU/ReLU, or gated (SwiGLU / GeGLU)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        n_in = 2 if cfg.gated else 1
        self.wi = init_param(rngs, (cfg.d_model, n_in, cfg.d_ff), cfg, ("embed", "gate", "mlp"))
        self.wo = init_param(rngs, (cfg.d_ff, cfg.d_model), cfg, ("mlp", "embed"))
        if cfg.use_bias:
            self.wi_bias = logical_param(jnp.zeros((n_in, cfg.d_ff), jnp.dtype(cfg.param_dtype)), ("gate", "mlp"))
            self.wo_bias = logical_param(jnp.zeros((cfg.d_model,), jnp.dtype(cfg.param_dtype)), ("embed",))

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
