"""Capture attention probabilities and hidden states of any archcmp model on one batch, and
re-run its stacks layer by layer with skip connections and/or MLPs ablated (rank collapse).

Capture (:func:`capture`)
-------------------------
``model(batch, return_attention=True, return_hidden=True)`` -- the model's own forward pass, the
same function that computes the logits, so the numerics are unchanged (``tests/test_rank_probe``
checks that the logits are identical with and without the extras).  Extras per architecture:

=========  ==================================  ======================================
arch       attention ``[L, B, H, Tq, Tk]``     hidden ``[L, B, T, D]`` (block outputs)
=========  ==================================  ======================================
encoder    ``self``                            ``hidden``
decoder    ``self``                            ``hidden``
prefix_lm  ``self`` (+ ``prefix``, see below)  ``hidden``
encdec     ``enc_self``, ``dec_self``, ``cross``  ``enc_hidden``, ``dec_hidden``
=========  ==================================  ======================================

Padding and packing: :func:`attention_segments` gives, per attention kind, the query and key
segment ids with which :func:`archcmp.analysis.rank.metrics.attention_block_metrics` cuts each example's
own block (real tokens only; segment 0 = padding).  ``prefix`` (prefix_lm only) is the
prefix x prefix sub-block of the same probabilities (query and key segment ids zeroed outside the
prefix): prefix queries cannot see later tokens, so its rows sum to one and it is the
bidirectional attention matrix of the prefix, the prefix-LM's analogue of the encoder's.
``causal`` (prefix_lm only) is the target x target sub-block of the same matrices: causal
(lower-triangular), but target queries also attend to the prefix, so each row is renormalised to
sum to one over the target keys (the attention among targets, given that it stays among them).
The two blocks of one matrix are the within-model contrast of bidirectional vs causal attention.

Rank-collapse ablations (:func:`stack_variants`)
------------------------------------------------
Each stack is re-run from its own parameters (``nnx.split(stack.blocks)``, leading axis L) with
the model's masks, positions (``stack.positions.add`` / ``.bias``, RoPE inside attention) and, for
the encdec decoder, the *full* model's encoder output as memory.  A sub-layer ``f`` (self-attention,
cross-attention or MLP) with its norm ``N`` is applied as

===================  =======================  =======================
                     pre-norm (default)       post-norm
===================  =======================  =======================
with skip            ``x + f(N(x))``          ``N(x + f(x))``
without skip         ``f(N(x))``              ``N(f(x))``
===================  =======================  =======================

and the variants are

* ``full``            -- every sub-layer with its skip: exactly the model (a test checks it
  reproduces the captured ``hidden``);
* ``attn_only``       -- attention sub-layers with skip, MLP sub-layers removed (x unchanged);
* ``no_skip``         -- attention and MLP sub-layers, both without skip;
* ``pure_attention``  -- attention sub-layers without skip, no MLP: Dong, Cordonnier & Loukas's
  (2021) pure self-attention network, except that the layer norm of the sub-layer is kept.

Returned hidden states have depth 0 = the stack input (embedding + additive positions) and depth
l = the output of block l (before the final norm), ``[L + 1, B, T, D]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from archcmp.model import masks
from archcmp.analysis.rank.metrics import attention_block_metrics, rank_collapse_by_segment
from archcmp.model.archs import arch_spec

VARIANTS = ("full", "attn_only", "no_skip", "pure_attention")
_VARIANT_FLAGS = {  # name -> (skip connections, MLP)
    "full": (True, True), "attn_only": (True, False), "no_skip": (False, True), "pure_attention": (False, False)}
HIDDEN_KEYS = {"hidden": "stack", "enc_hidden": "enc", "dec_hidden": "dec"}


@dataclass
class Capture:
    """What one forward pass exposes: logits, attention per kind, hidden states per stack (numpy)."""

    logits: np.ndarray                                            # [B, T, V]
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> [L, B, H, Tq, Tk]
    hidden: dict[str, np.ndarray] = field(default_factory=dict)     # hidden / enc_hidden / dec_hidden -> [L, B, T, D]


def _is_encdec(model) -> bool:
    return arch_spec(model.cfg.arch).encoder_stack


def model_batch(batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """The model inputs of a formatter batch as jax arrays (targets / weights dropped)."""
    keep = ("inputs", "segment_ids", "positions", "prefix_mask", "token_types", "enc_inputs", "enc_segment_ids",
            "enc_positions")
    return {k: jnp.asarray(batch[k]) for k in keep if k in batch}


def make_forward(graphdef) -> Any:
    """Jitted ``(state, batch) -> (logits, extras)`` with every attention and hidden extra.

    One compilation per model shape; reuse it for every checkpoint of a run.
    """
    @jax.jit
    def forward(state, batch):
        return nnx.merge(graphdef, state)(batch, return_attention=True, return_hidden=True)
    return forward


def capture(model, batch: Mapping[str, Any], forward=None, state=None) -> Capture:
    """Attention probabilities and hidden states of ``model`` on ``batch`` (see module docstring).

    ``forward``/``state`` (from :func:`make_forward` and ``nnx.split``) avoid re-tracing per call.
    """
    mb = model_batch(batch)
    if forward is None:
        logits, extras = model(mb, return_attention=True, return_hidden=True)
    else:
        logits, extras = forward(nnx.state(model) if state is None else state, mb)
    extras = jax.device_get(extras)
    hidden = {k: np.asarray(v) for k, v in extras.items() if k in HIDDEN_KEYS}
    attention = {k: np.asarray(v) for k, v in extras.items() if k not in HIDDEN_KEYS}
    return Capture(np.asarray(logits), attention, hidden)


def attention_segments(arch: str, batch: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Attention kind -> (query segment ids [B, Tq], key segment ids [B, Tk] or None = same).

    Blocks cut with these ids are each example's own attention among its real tokens.
    """
    seg = np.asarray(batch["segment_ids"])
    if arch_spec(arch).encoder_stack:
        enc = np.asarray(batch["enc_segment_ids"])
        return {"enc_self": (enc, None), "dec_self": (seg, None), "cross": (seg, enc)}
    out = {"self": (seg, None)}
    if arch_spec(arch).prompt_is_prefix:
        prefix = np.asarray(batch["prefix_mask"], bool)
        out["prefix"] = (np.where(prefix, seg, 0), None)
        out["causal"] = (np.where(prefix, 0, seg), None)
    return out


# Sub-blocks cut from another kind's probabilities; those in RENORMALISED have rows that do not sum
# to one inside the block, so their rows are renormalised over the block's keys.
SOURCE_KIND = {"prefix": "self", "causal": "self"}
RENORMALISED = frozenset({"causal"})


def renormalise_rows(probs, seg_k) -> np.ndarray:
    """``probs [L, B, H, Tq, Tk]`` with the keys outside ``seg_k [B, Tk] > 0`` zeroed and each
    row rescaled to sum to one over the remaining keys (rows with no mass there stay zero)."""
    p = np.asarray(probs, np.float64) * (np.asarray(seg_k) > 0)[None, :, None, None, :]
    total = p.sum(axis=-1, keepdims=True)
    return np.divide(p, total, out=np.zeros_like(p), where=total > 0)


def capture_metrics(cap: Capture, batch: Mapping[str, Any], arch: str, keep_spectra: bool = False) -> pd.DataFrame:
    """Rank metrics of every (kind, layer, head, example) block; adds ``kind``, ``effective_rank_frac``
    (effective rank / min(n, n_k)) and ``numerical_rank_f32_frac``."""
    frames = []
    for kind, (seg_q, seg_k) in attention_segments(arch, batch).items():
        probs = cap.attention[SOURCE_KIND.get(kind, kind)]
        if kind in RENORMALISED:
            probs = renormalise_rows(probs, seg_q if seg_k is None else seg_k)
        df = attention_block_metrics(probs, seg_q, seg_k, cross=kind == "cross", keep_spectra=keep_spectra)
        if df.empty:  # e.g. texts laid out as all prefix: no target x target block
            continue
        df.insert(0, "kind", kind)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    k = np.minimum(df["n"], df["n_k"]).astype(float)
    df["effective_rank_frac"] = df["effective_rank"] / k
    df["numerical_rank_f32_frac"] = df["numerical_rank_f32"] / k
    return df


# ----------------------------------------------------------------------------- ablations
def _sublayer(x, norm, fn, skip: bool, pre: bool):
    if pre:
        y = fn(norm(x))
        return x + y if skip else y
    y = fn(x)
    return norm(x + y) if skip else norm(y)


def run_stack(stack, x, mask, positions, variant: str = "full", memory=None, cross_mask=None) -> np.ndarray:
    """Re-run ``stack`` layer by layer on embedded tokens ``x [B, T, D]`` under ``variant``.

    Returns the hidden states ``[L + 1, B, T, D]`` (jax array; depth 0 = input after additive
    positions; no final norm).  See the module docstring for what each variant computes.
    """
    if variant not in _VARIANT_FLAGS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    skip, use_mlp = _VARIANT_FLAGS[variant]
    pre = stack.cfg.norm_position == "pre"
    x = stack.embed_inputs(x, positions)
    bias = stack.positions.bias(positions)
    graphdef, params = nnx.split(stack.blocks)
    out = [x]
    for i in range(stack.n_layers):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], params))
        x = _sublayer(x, block.self_norm, lambda h: block.self_attn(h, mask, positions, bias=bias)[0], skip, pre)
        if block.has_cross:
            x = _sublayer(x, block.cross_norm, lambda h: block.cross_attn(h, cross_mask, memory=memory)[0], skip, pre)
        if use_mlp:
            x = _sublayer(x, block.mlp_norm, block.mlp, skip, pre)
        out.append(x)
    return jnp.stack(out)


def _variants(model, mb: Mapping[str, jax.Array], variants) -> dict[str, jax.Array]:
    cfg = model.cfg
    out = {}
    if not _is_encdec(model):
        x, mask = model.embed(mb["inputs"], mb.get("token_types")), model.mask(mb)
        for v in variants:
            out[f"stack/{v}"] = run_stack(model.stack, x, mask, mb["positions"], v)
        return out
    enc_mask = masks.self_attention_mask("encoder", mb["enc_segment_ids"], mb["enc_positions"], None,
                                         cfg.attention_pattern, cfg.window, cfg.stride)
    dec_mask = masks.self_attention_mask("decoder", mb["segment_ids"], mb["positions"], None,
                                         cfg.attention_pattern, cfg.window, cfg.stride)
    cross_mask = masks.cross_attention_mask(mb["segment_ids"], mb["enc_segment_ids"])
    memory = model.encode(mb["enc_inputs"], mb["enc_segment_ids"], mb["enc_positions"])  # the full encoder
    x_enc, x_dec = model.embed(mb["enc_inputs"]), model.embed(mb["inputs"])
    for v in variants:
        out[f"enc/{v}"] = run_stack(model.encoder, x_enc, enc_mask, mb["enc_positions"], v)
        out[f"dec/{v}"] = run_stack(model.decoder, x_dec, dec_mask, mb["positions"], v,
                                    memory=memory, cross_mask=cross_mask)
    return out


def make_variants(graphdef, variants=VARIANTS) -> Any:
    """Jitted ``(state, batch) -> {"<stack>/<variant>": hidden [L+1, B, T, D]}`` (one compilation
    per model shape; reuse it for every checkpoint of a run)."""
    variants = tuple(variants)

    @jax.jit
    def run(state, batch):
        return _variants(nnx.merge(graphdef, state), batch, variants)
    return run


def stack_variants(model, batch: Mapping[str, Any], variants=VARIANTS, fn=None,
                   state=None) -> dict[tuple[str, str], np.ndarray]:
    """``(stack, variant) -> hidden [L+1, B, T, D]`` (numpy) for every stack of ``model``
    (``stack`` for single-stack models, ``enc``/``dec`` for encdec).  ``fn``/``state``: from
    :func:`make_variants` and ``nnx.split`` (otherwise runs eagerly, op by op)."""
    mb = model_batch(batch)
    out = _variants(model, mb, tuple(variants)) if fn is None else fn(nnx.state(model) if state is None else state, mb)
    return {tuple(k.split("/")): np.asarray(v) for k, v in jax.device_get(out).items()}


def make_probe(graphdef, variants=VARIANTS) -> Any:
    """One jitted ``(state, batch) -> (logits, extras, {"<stack>/<variant>": hidden})``: the capture
    of :func:`make_forward` and the ablations of :func:`make_variants` in a single compilation."""
    variants = tuple(variants)

    @jax.jit
    def probe(state, batch):
        model = nnx.merge(graphdef, state)
        logits, extras = model(batch, return_attention=True, return_hidden=True)
        return logits, extras, _variants(model, batch, variants)
    return probe


def probe(model, batch: Mapping[str, Any], fn, state=None) -> tuple[Capture, dict[tuple[str, str], np.ndarray]]:
    """(:func:`capture`, :func:`stack_variants`) from one call of ``fn = make_probe(graphdef)``."""
    logits, extras, hidden = jax.device_get(fn(nnx.state(model) if state is None else state, model_batch(batch)))
    cap = Capture(np.asarray(logits), {k: np.asarray(v) for k, v in extras.items() if k not in HIDDEN_KEYS},
                  {k: np.asarray(v) for k, v in extras.items() if k in HIDDEN_KEYS})
    return cap, {tuple(k.split("/")): np.asarray(v) for k, v in hidden.items()}


def collapse_from_hidden(variant_hidden: Mapping[tuple[str, str], np.ndarray], batch: Mapping[str, Any],
                         norm: str = "l1inf") -> pd.DataFrame:
    """:func:`rank_collapse_table` from precomputed ``(stack, variant) -> hidden`` (see :func:`probe`)."""
    frames = []
    for (stack, variant), hidden in variant_hidden.items():
        df = rank_collapse_by_segment(hidden, stack_segments(stack, batch), norm=norm)
        df.insert(0, "variant", variant)
        df.insert(0, "stack", stack)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def stack_segments(stack: str, batch: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(batch["enc_segment_ids"] if stack == "enc" else batch["segment_ids"])


def rank_collapse_table(model, batch: Mapping[str, Any], variants=VARIANTS, norm: str = "l1inf", fn=None,
                        state=None) -> pd.DataFrame:
    """Relative rank-collapse residual ``||X - 1x^T|| / ||X||`` per (stack, variant, depth, example).

    Columns: stack, variant, layer (= depth, 0 = stack input), batch, segment, n, residual, norm_x,
    relative (:func:`archcmp.analysis.rank.metrics.rank_collapse_by_segment`, ``norm`` as there).
    ``fn``/``state`` as in :func:`stack_variants`.
    """
    return collapse_from_hidden(stack_variants(model, batch, variants, fn, state), batch, norm)
