"""The four architectures, wired from the shared components (:mod:`archcmp.model.layers`,
:mod:`~archcmp.model.attention`, :mod:`~archcmp.model.embeddings`).

| arch      | stack(s)                                   | self-attention mask            |
|-----------|--------------------------------------------|--------------------------------|
| encoder   | one stack + MLM head                       | bidirectional                  |
| decoder   | one stack + LM head                        | causal                         |
| prefix_lm | one stack (the decoder's) + LM head        | prefix bidirectional, causal after |
| encdec    | encoder stack + decoder stack with cross-attention, one shared embedding | bidirectional / causal |

Every model is called on a batch dict (see ``docs/design.md``) and returns logits
``[B, T, V]`` (float32), or ``(logits, extras)`` with attention probabilities
``[L, B, H, Tq, Tk]`` when ``return_attention=True``.

KV cache (causal stacks only; used by :mod:`archcmp.decoding.generate`): ``cache = model.init_cache(...)``
then ``logits, cache = model(batch, cache=cache)`` appends the batch's ``T`` tokens at slot
``cache["index"]`` and attends over every cached slot. The cache is plain data (a dict of arrays):

  self      {"k", "v"}  [L, B, S_max, H, K]  self-attention keys/values (RoPE already applied)
  cross     {"k", "v"}  [L, B, S_enc, H, K]  encdec only: the memory's keys/values, computed once
  segment_ids, positions [B, S_max] int32, prefix_mask [B, S_max] bool: per-slot metadata, so the
            mask (segment, causal or prefix, sparse pattern) and the relative bias of the new
            queries against all cached keys are built exactly as in the full forward pass
  enc_segment_ids [B, S_enc]  encdec only
  index     int32 scalar: next free slot (the same for every row; decode left-pads prompts)
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archcmp.model import masks
from archcmp.model.config import ModelConfig
from archcmp.model.embeddings import Embed
from archcmp.model.layers import Norm, Stack, activation
from archcmp.model.params import cast_param, dropout, init_param, logical_param

Array = jax.Array
Batch = Mapping[str, Array]


class _Head(nnx.Module):
    """Output projection D -> V: the tied embedding or its own kernel; optionally BERT's MLM
    transform before it (``head_transform``) and a vocabulary bias (``head_bias``)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        if not cfg.tie_embeddings:
            self.kernel = init_param(rngs, (cfg.d_model, cfg.vocab_size), cfg, ("embed", "vocab"))
        if cfg.head_transform:
            self.dense = init_param(rngs, (cfg.d_model, cfg.d_model), cfg, ("embed", "mlp"))
            self.dense_bias = logical_param(jnp.zeros((cfg.d_model,), jnp.dtype(cfg.param_dtype)), ("mlp",))
            self.norm = Norm(cfg)
        if cfg.head_bias:
            self.bias = logical_param(jnp.zeros((cfg.vocab_size,), jnp.dtype(cfg.param_dtype)), ("vocab",))

    def __call__(self, x: Array, embed: Embed) -> Array:
        cfg = self.cfg
        if cfg.head_transform:  # [B, T, D] -> [B, T, D]
            x = jnp.einsum("btd,de->bte", x, cast_param(self.dense, cfg)) + cast_param(self.dense_bias, cfg)
            x = self.norm(activation(cfg.activation, x))
        if cfg.tie_embeddings:
            logits = embed.attend(x * cfg.d_model ** -0.5 if cfg.tied_head_scale else x)
        else:
            logits = jnp.einsum("btd,dv->btv", x, cast_param(self.kernel, cfg))
        if cfg.head_bias:
            logits = logits + cast_param(self.bias, cfg)
        return logits.astype(jnp.float32)  # [B, T, V]


def _concrete(x: Any) -> bool:
    """True for a value known on the host (an eager call), False for a tracer under jit."""
    return not isinstance(x, jax.core.Tracer)


def check_token_ids(ids: Any, vocab_size: int, key: str) -> None:
    """Token ids must lie in [0, vocab_size): a host-side check of concrete ids.

    JAX clamps out-of-range gather indices, which would silently read another token's embedding.
    Eager calls and decoding (whose prompts are host arrays) are checked here; under jit the ids
    are tracers and cannot be inspected, so :class:`archcmp.model.embeddings.Embed` then turns an
    out-of-range id into a NaN embedding (the loss becomes NaN instead of silently wrong).
    """
    if not _concrete(ids):
        return
    a = np.asarray(ids)
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        bad = int(a.max()) if a.max() >= vocab_size else int(a.min())
        raise ValueError(f"batch[{key!r}] holds token id {bad}: outside model.vocab_size={vocab_size} "
                         f"(ids must be 0..{vocab_size - 1})")


_DECODER_KEYS = ("inputs", "segment_ids", "positions")
_SINGLE_STACK_KEYS = {"encoder": _DECODER_KEYS, "decoder": _DECODER_KEYS, "prefix_lm": (*_DECODER_KEYS, "prefix_mask")}


def _check_batch(cfg: ModelConfig, batch: Batch, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in batch:
            raise ValueError(f"arch={cfg.arch!r} needs batch[{key!r}]")
    for key in ("inputs", "enc_inputs"):
        if key in keys:
            check_token_ids(batch[key], cfg.vocab_size, key)


def _check_cache_room(cache: dict, n_new: int) -> None:
    """The new tokens must fit in the cache (``dynamic_update_slice`` would clamp the slot and
    overwrite the last cached tokens). Checked when the slot index is concrete; under jit the
    caller sizes the cache (:mod:`archcmp.decoding.generate` allocates prompt + max_new_tokens slots)."""
    slots = cache["segment_ids"].shape[1]
    index = cache["index"]
    start = int(index) if _concrete(index) else 0
    if start + n_new > slots:
        raise ValueError(f"KV cache overflow: {n_new} new token(s) at slot {start} of a {slots}-slot cache "
                         f"(init_cache(..., max_len) must cover the prompt and every generated token)")


def _cached_mask(kind: str, cfg: ModelConfig, batch: Batch, meta: dict) -> Array:
    """Self-attention mask of the new tokens against every cache slot: the rows of the full
    mask (:func:`masks.self_attention_mask`) for these queries.  -> [B, 1, Tq, S]."""
    return masks.layer_masks(kind, batch["segment_ids"], batch["positions"], meta["prefix_mask"],
                             cfg.patterns, cfg.window, cfg.stride,
                             key_segment_ids=meta["segment_ids"], key_positions=meta["positions"])


def _empty_cache(cfg: ModelConfig, n_layers: int, batch_size: int, max_len: int) -> dict:
    shape = (n_layers, batch_size, max_len, cfg.n_heads, cfg.head_size)
    zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
    meta = jnp.zeros((batch_size, max_len), jnp.int32)
    return {"self": {"k": zeros, "v": zeros}, "segment_ids": meta, "positions": meta,
            "prefix_mask": jnp.zeros((batch_size, max_len), bool), "index": jnp.zeros((), jnp.int32)}


def _write_meta(cache: dict, batch: Batch) -> tuple[dict, Array]:
    """Store the new tokens' segment ids / positions / prefix flags at ``cache['index']``."""
    _check_cache_room(cache, batch["inputs"].shape[1])
    idx = cache["index"]
    prefix = batch.get("prefix_mask")
    prefix = jnp.zeros(batch["inputs"].shape, bool) if prefix is None else jnp.asarray(prefix, bool)
    new = {"segment_ids": batch["segment_ids"], "positions": batch["positions"], "prefix_mask": prefix}
    new = {k: jax.lax.dynamic_update_slice(cache[k], v.astype(cache[k].dtype), (0, idx)) for k, v in new.items()}
    return new, idx


def _no_extras_with_cache(return_attention: bool, return_hidden: bool) -> None:
    if return_attention or return_hidden:
        raise ValueError("return_attention / return_hidden are not supported together with cache=")


class SingleStackLM(nnx.Module):
    """Encoder-only, decoder-only and prefix-LM: the same stack, three masks."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg, rngs)
        self.stack = Stack(cfg, cfg.enc_layers, rngs, causal=cfg.arch == "decoder")
        self.head = _Head(cfg, rngs)

    def mask(self, batch: Batch) -> Array:
        """Self-attention mask of this architecture for the batch.  -> [B, 1, T, T] bool
        ([P, B, 1, T, T], one per distinct pattern, with ``cfg.layer_patterns``)."""
        cfg = self.cfg
        return masks.layer_masks(cfg.arch, batch["segment_ids"], batch["positions"],
                                 batch.get("prefix_mask"), cfg.patterns, cfg.window, cfg.stride)

    def init_cache(self, batch_size: int, max_len: int) -> dict:
        """Empty KV cache of ``max_len`` slots (decoder / prefix_lm; see the module docstring)."""
        if self.cfg.arch == "encoder":
            raise ValueError("arch='encoder' is bidirectional: there is no KV cache (use mask filling)")
        return _empty_cache(self.cfg, self.stack.n_layers, batch_size, max_len)

    def _cached(self, batch: Batch, cache: dict) -> tuple[Array, dict]:
        meta, idx = _write_meta(cache, batch)
        mask = _cached_mask(self.cfg.arch, self.cfg, batch, meta)
        h, _, stack_cache = self.stack(self.embed(batch["inputs"]), mask, batch["positions"],
                                       cache={"self": cache["self"]}, cache_index=idx,
                                       key_positions=meta["positions"])
        new = dict(cache, **meta, self=stack_cache["self"], index=idx + batch["inputs"].shape[1])
        return self.head(h, self.embed), new

    def __call__(self, batch: Batch, return_attention: bool = False, return_hidden: bool = False,
                 dropout_key: Array | None = None, cache: dict | None = None) -> Any:
        """batch -> logits [B,T,V] (or (logits, extras)); with ``cache=`` -> (logits, new_cache)."""
        _check_batch(self.cfg, batch, _SINGLE_STACK_KEYS[self.cfg.arch])
        if cache is not None:
            _no_extras_with_cache(return_attention, return_hidden)
            return self._cached(batch, cache)
        h, extras = self._trunk(batch, dropout_key, return_attention, return_hidden)
        logits = self.head(h, self.embed)
        if not (return_attention or return_hidden):
            return logits
        return logits, extras

    def _trunk(self, batch: Batch, dropout_key: Array | None, return_attention: bool = False,
               return_hidden: bool = False) -> tuple[Array, dict]:
        x = self.embed(batch["inputs"], batch.get("token_types"))  # [B, T, D]
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        x = dropout(x, self.cfg.dropout, keys[0])
        return self.stack(x, self.mask(batch), batch["positions"], key=keys[1],
                          return_attention=return_attention, return_hidden=return_hidden)

    def features(self, batch: Batch, dropout_key: Array | None = None) -> dict[str, Array | None]:
        """The stack's output before the LM head (what a classifier head reads):
        ``{"tokens": [B, T, D], "memory": None}``."""
        _check_batch(self.cfg, batch, _SINGLE_STACK_KEYS[self.cfg.arch])
        return {"tokens": self._trunk(batch, dropout_key)[0], "memory": None}


class EncoderDecoder(nnx.Module):
    """T5-style encoder-decoder: one embedding shared by both sides, ``encode()`` and ``decode()``."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg, rngs)
        self.encoder = Stack(cfg, cfg.enc_layers, rngs)
        self.decoder = Stack(cfg, cfg.dec_layers, rngs, cross=True, causal=True)
        self.head = _Head(cfg, rngs)

    def encode(self, enc_inputs: Array, enc_segment_ids: Array, enc_positions: Array,
               return_attention: bool = False, return_hidden: bool = False, dropout_key: Array | None = None):
        """Bidirectional encoder.  enc_inputs [B, S] -> memory [B, S, D] (and extras)."""
        cfg = self.cfg
        check_token_ids(enc_inputs, cfg.vocab_size, "enc_inputs")
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        x = dropout(self.embed(enc_inputs), cfg.dropout, keys[0])
        mask = masks.layer_masks("encoder", enc_segment_ids, enc_positions, None,
                                 cfg.patterns, cfg.window, cfg.stride)
        memory, extras = self.encoder(x, mask, enc_positions, key=keys[1],
                                      return_attention=return_attention, return_hidden=return_hidden)
        return (memory, extras) if (return_attention or return_hidden) else memory

    def init_cache(self, memory: Array, enc_segment_ids: Array, max_len: int) -> dict:
        """KV cache of the decoder for ``max_len`` decoder slots, with the cross-attention keys/values
        of ``memory`` [B,S,D] computed once here (see the module docstring)."""
        cache = _empty_cache(self.cfg, self.decoder.n_layers, memory.shape[0], max_len)
        cache["cross"] = self.decoder.memory_kv(memory)
        cache["enc_segment_ids"] = enc_segment_ids
        return cache

    def _cached(self, batch: Batch, cache: dict) -> tuple[Array, dict]:
        meta, idx = _write_meta(cache, batch)
        mask = _cached_mask("decoder", self.cfg, batch, meta)
        cross_mask = masks.cross_attention_mask(batch["segment_ids"], cache["enc_segment_ids"])
        h, _, stack_cache = self.decoder(self.embed(batch["inputs"]), mask, batch["positions"],
                                         cross_mask=cross_mask, cache={"self": cache["self"], "cross": cache["cross"]},
                                         cache_index=idx, key_positions=meta["positions"])
        new = dict(cache, **meta, self=stack_cache["self"], index=idx + batch["inputs"].shape[1])
        return self.head(h, self.embed), new

    def decode(self, memory: Array | None, batch: Batch, return_attention: bool = False,
               return_hidden: bool = False, dropout_key: Array | None = None, cache: dict | None = None):
        """Causal decoder with cross-attention to ``memory``.  -> logits [B, T, V] (and extras).

        With ``cache=`` (from :meth:`init_cache`; ``memory`` is then unused and may be None) the
        batch's tokens are appended to the cache and ``(logits, new_cache)`` is returned.
        """
        cfg = self.cfg
        _check_batch(cfg, batch, _DECODER_KEYS if cache is not None else (*_DECODER_KEYS, "enc_segment_ids"))
        if cache is not None:
            _no_extras_with_cache(return_attention, return_hidden)
            return self._cached(batch, cache)
        h, extras = self._decoder_trunk(memory, batch, dropout_key, return_attention, return_hidden)
        logits = self.head(h, self.embed)
        return (logits, extras) if (return_attention or return_hidden) else logits

    def _decoder_trunk(self, memory: Array, batch: Batch, dropout_key: Array | None, return_attention: bool = False,
                       return_hidden: bool = False) -> tuple[Array, dict]:
        cfg = self.cfg
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        x = dropout(self.embed(batch["inputs"]), cfg.dropout, keys[0])
        self_mask = masks.layer_masks("decoder", batch["segment_ids"], batch["positions"], None,
                                      cfg.patterns, cfg.window, cfg.stride)
        cross_mask = masks.cross_attention_mask(batch["segment_ids"], batch["enc_segment_ids"])
        return self.decoder(x, self_mask, batch["positions"], memory=memory, cross_mask=cross_mask,
                            key=keys[1], return_attention=return_attention, return_hidden=return_hidden)

    def features(self, batch: Batch, dropout_key: Array | None = None) -> dict[str, Array | None]:
        """The decoder stack's output before the LM head and the encoder's memory (what a classifier
        head reads): ``{"tokens": [B, T, D], "memory": [B, S, D]}``."""
        _check_batch(self.cfg, batch, (*_DECODER_KEYS, "enc_segment_ids"))
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        memory = self.encode(batch["enc_inputs"], batch["enc_segment_ids"], batch["enc_positions"],
                             dropout_key=keys[0])
        return {"tokens": self._decoder_trunk(memory, batch, keys[1])[0], "memory": memory}

    def __call__(self, batch: Batch, return_attention: bool = False, return_hidden: bool = False,
                 dropout_key: Array | None = None, cache: dict | None = None) -> Any:
        if cache is not None:  # the encoder already ran: its output lives in the cache
            return self.decode(None, batch, return_attention, return_hidden, dropout_key, cache=cache)
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        want = return_attention or return_hidden
        enc = self.encode(batch["enc_inputs"], batch["enc_segment_ids"], batch["enc_positions"],
                          return_attention, return_hidden, keys[0])
        memory, enc_extras = enc if want else (enc, {})
        dec = self.decode(memory, batch, return_attention, return_hidden, keys[1])
        if not want:
            return dec
        logits, dec_extras = dec
        extras = {f"enc_{k}": v for k, v in enc_extras.items()}
        extras.update({f"dec_{k}" if k != "cross" else k: v for k, v in dec_extras.items()})
        return logits, extras


def build_model(cfg: ModelConfig, seed: int = 0) -> nnx.Module:
    """Build any of the four architectures from one config."""
    rngs = nnx.Rngs(params=seed)
    if cfg.arch == "encdec":
        return EncoderDecoder(cfg, rngs)
    return SingleStackLM(cfg, rngs)
