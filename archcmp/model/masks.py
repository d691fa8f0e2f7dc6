"""Attention masks as small pure functions.

Every mask is boolean, ``True`` = the query may attend to the key, with shape
``[B, 1, Tq, Tk]`` (the 1 broadcasts over heads). Masks stay boolean until
:func:`archcmp.model.attention.attend` turns them into logit biases. Combine them with
:func:`combine_masks` (logical AND) and, for the prefix-LM, OR the causal mask with the
prefix mask (t5x's decoder-mask recipe).
"""
from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray


def make_attention_mask(query_ok: Array, key_ok: Array) -> Array:
    """Outer AND of per-token flags.  [B, Tq], [B, Tk] -> [B, 1, Tq, Tk]."""
    return (query_ok[:, :, None] & key_ok[:, None, :])[:, None]


def padding_mask(q_segment_ids: Array, k_segment_ids: Array | None = None) -> Array:
    """Real tokens (segment id > 0) attend to real tokens.  -> [B, 1, Tq, Tk]."""
    k_segment_ids = q_segment_ids if k_segment_ids is None else k_segment_ids
    return make_attention_mask(q_segment_ids > 0, k_segment_ids > 0)


def segment_mask(q_segment_ids: Array, k_segment_ids: Array | None = None) -> Array:
    """Packed examples never see each other: same non-zero segment id.  -> [B, 1, Tq, Tk]."""
    k_segment_ids = q_segment_ids if k_segment_ids is None else k_segment_ids
    same = q_segment_ids[:, :, None] == k_segment_ids[:, None, :]  # [B, Tq, Tk]
    real = (q_segment_ids[:, :, None] > 0) & (k_segment_ids[:, None, :] > 0)
    return (same & real)[:, None]


def make_causal_mask(positions: Array, key_positions: Array | None = None) -> Array:
    """Key position <= query position.  positions [B, Tq] (keys: ``key_positions`` [B, Tk],
    default the queries themselves) -> [B, 1, Tq, Tk].

    Uses per-token positions, so with packing (positions restart per segment) it must be
    combined with :func:`segment_mask`; within one segment it is the lower triangle.
    """
    key_positions = positions if key_positions is None else key_positions
    return (key_positions[:, None, :] <= positions[:, :, None])[:, None]


def bidirectional_mask(segment_ids: Array) -> Array:
    """Every real token sees every real token of its own segment.  -> [B, 1, T, T]."""
    return segment_mask(segment_ids)


def prefix_allowed(prefix_mask: Array, positions: Array, key_positions: Array | None = None) -> Array:
    """Causal OR key-in-prefix (before segment restriction).  -> [B, 1, Tq, Tk] bool.

    ``prefix_mask`` [B, Tk] flags the keys in the prefix; ``positions`` [B, Tq] are the queries'
    (``key_positions`` the keys', default the same tokens). A query sees keys at or before it,
    and every prefix key. Inside the prefix this is bidirectional; after it, causal with the
    whole prefix visible.
    """
    key_in_prefix = prefix_mask[:, None, None, :]  # [B, 1, 1, Tk]
    return make_causal_mask(positions, key_positions) | key_in_prefix


def combine_masks(*masks: Array | None) -> Array:
    """Logical AND of the masks that are not None (all broadcastable to one shape)."""
    present = [m for m in masks if m is not None]
    if not present:
        raise ValueError("combine_masks needs at least one mask")
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


def _offsets(positions: Array, key_positions: Array | None) -> Array:
    """Query position minus key position, i - j.  [B, Tq], [B, Tk] -> [B, Tq, Tk]."""
    key_positions = positions if key_positions is None else key_positions
    return positions[:, :, None] - key_positions[:, None, :]


def local_mask(positions: Array, window: int, causal: bool, key_positions: Array | None = None) -> Array:
    """Band of width ``window``: |i - j| < window (or i - j < window if causal).  -> [B,1,Tq,Tk]."""
    offset = _offsets(positions, key_positions)
    band = offset < window if causal else jnp.abs(offset) < window
    return band[:, None]


def strided_mask(positions: Array, window: int, stride: int, causal: bool,
                 key_positions: Array | None = None) -> Array:
    """GPT-3 / Sparse-Transformer style: local band OR every ``stride``-th offset.  -> [B,1,Tq,Tk].

    Query i sees key j when |i - j| < window, or when (i - j) is a multiple of ``stride``
    ("atrous" attention). With ``causal`` only j <= i is kept by the causal mask it is
    combined with; this function only restricts the pattern.
    """
    offset = _offsets(positions, key_positions)
    local = (offset < window) if causal else (jnp.abs(offset) < window)
    atrous = (offset % stride) == 0
    return (local | atrous)[:, None]


def pattern_mask(positions: Array, pattern: str, window: int, stride: int, causal: bool,
                 key_positions: Array | None = None) -> Array | None:
    """The sparse-attention pattern named in the config, or None for dense."""
    if pattern == "dense":
        return None
    if pattern == "local":
        return local_mask(positions, window, causal, key_positions)
    if pattern == "strided":
        return strided_mask(positions, window, stride, causal, key_positions)
    raise ValueError(f"model.attention_pattern={pattern!r}: unknown pattern")


def self_attention_mask(
    arch: str,
    segment_ids: Array,
    positions: Array,
    prefix_mask: Array | None = None,
    pattern: str = "dense",
    window: int = 32,
    stride: int = 32,
    key_segment_ids: Array | None = None,
    key_positions: Array | None = None,
) -> Array:
    """The self-attention mask of one stack.  -> [B, 1, Tq, Tk] bool.

    ``arch`` names the stack's visibility: "encoder" (bidirectional), "decoder" (causal),
    "prefix_lm" (bidirectional over the prefix, causal after). Always restricted to the
    token's own packed segment and to real tokens.

    By default the keys are the queries (Tq = Tk = T). The KV-cached decoding step passes the
    new tokens as queries and every cache slot as keys (``key_segment_ids`` / ``key_positions``
    [B, S], ``prefix_mask`` then flags the key slots), which gives exactly the rows of the
    full-sequence mask for those queries.
    """
    same = segment_mask(segment_ids, key_segment_ids)  # [B, 1, Tq, Tk]
    if arch == "encoder":
        visible = None
        causal = False
    elif arch == "decoder":
        visible = make_causal_mask(positions, key_positions)
        causal = True
    elif arch == "prefix_lm":
        if prefix_mask is None:
            raise ValueError("arch='prefix_lm' needs batch['prefix_mask']")
        visible = prefix_allowed(prefix_mask, positions, key_positions)
        causal = False  # the prefix part is bidirectional; the pattern is symmetric there
    else:
        raise ValueError(f"self_attention_mask: unknown stack kind {arch!r}")
    sparse = pattern_mask(positions, pattern, window, stride, causal, key_positions)
    return combine_masks(same, visible, sparse)


def layer_masks(arch: str, segment_ids: Array, positions: Array, prefix_mask: Array | None,
                patterns: tuple[str, ...], window: int, stride: int, key_segment_ids: Array | None = None,
                key_positions: Array | None = None) -> Array:
    """Self-attention masks of a stack whose layers use ``patterns`` (the distinct patterns, see
    ``ModelConfig.patterns``).  One pattern: [B, 1, Tq, Tk]; several: stacked [P, B, 1, Tq, Tk],
    which the layer scan indexes with each layer's pattern id."""
    made = [self_attention_mask(arch, segment_ids, positions, prefix_mask, p, window, stride,
                                key_segment_ids, key_positions) for p in patterns]
    return made[0] if len(made) == 1 else jnp.stack(made)


def cross_attention_mask(dec_segment_ids: Array, enc_segment_ids: Array) -> Array:
    """Decoder token sees every real encoder token of the same example.  -> [B, 1, Tdec, Tenc]."""
    return segment_mask(dec_segment_ids, enc_segment_ids)
