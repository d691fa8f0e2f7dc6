"""Generation for all four architectures: greedy / sampling / beam search, KV cache, encoder mask filling.

Entry point::

    tokens = generate(model, prompts, DecodeConfig(strategy="greedy", max_new_tokens=32), rng)
    # prompts: Examples (their ``inputs`` are used) or 1-D int arrays x; tokens: int32 [B, max_new]

Prompt layouts follow the data formatters (``archcmp.data.formatters``) exactly, token by token:

  decoder / prefix_lm  ``BOS x SEP`` then generate y (prefix_lm: the prompt is the bidirectional
                       prefix, filled in one prefill pass with the prefix mask)
  encdec               encoder ``x`` (run once; the cross-attention K/V are cached), decoder from ``BOS``
  encoder              ``BOS x SEP MASK*k``: parallel mask filling + Mask-Predict refinement

Rows of different prompt lengths share one batch: causal prompts are *left*-padded (segment id 0,
masked out) so every row writes its next token to the same cache slot; each token keeps its
formatter position (0 at BOS), so logits equal those of the formatter's right-padded eval batch.

Every generated sequence stops at ``vocab.EOS`` (kept) and is PAD after it; the loop is a
``lax.while_loop`` that exits as soon as every row has emitted EOS (or after ``max_new_tokens``).

Logit processing order (sampling): repetition penalty -> temperature -> top-k -> top-p. The
repetition penalty is CTRL's (Keskar et al. 2019): logits of tokens already *generated* (prompt
tokens excluded) are divided by the penalty when positive, multiplied when negative.

Beam search (``archcmp.decoding.beam``) ranks finished hypotheses by ``log p(y) / lp(|y|)`` with the
GNMT / T5 length penalty ``lp(n) = ((5 + n) / 6) ** alpha`` (Wu et al. 2016), n = number of
generated tokens including EOS; alpha = 0 is plain log-probability.

``use_cache=False`` recomputes the whole prefix every step (fixed-shape buffer, for correctness
checks and benchmarks); results equal the cached path up to float rounding.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.decoding.beam import beam_search
from archcmp.model.archs import arch_spec
from archcmp.model.models import check_token_ids
# the shared LM machinery, importable from here too (one import for callers of generate)
from archcmp.decoding.lm import (STRATEGIES, DecodeConfig, check_lengths, choose, filter_logits, lm_start, lm_step, prompt_arrays,
                                 pad_after_eos, prompt_batch, repetition_penalty, take_rows)

__all__ = ["STRATEGIES", "DecodeConfig", "answer_logprobs", "beam_search", "check_lengths", "choose", "filter_logits",
           "generate", "lm_start", "lm_step", "mask_fill", "pad_after_eos", "prompt_batch", "repetition_penalty",
           "run_lm", "take_rows", "teacher_forced_logprobs"]

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("graphdef", "dcfg"))
def _sample_jit(graphdef, params, prompt, rng, dcfg: DecodeConfig):
    model = nnx.merge(graphdef, params)
    N = dcfg.max_new_tokens
    state, logits = lm_start(model, prompt, N, dcfg.use_cache)
    B = logits.shape[0]

    def cond(c):
        t, _, _, _, done, _ = c
        return (t < N) & ~jnp.all(done)

    def body(c):
        t, state, logits, out, done, rng = c
        rng, key = jax.random.split(rng)
        logits = repetition_penalty(logits, out, t, dcfg.repetition_penalty)
        tok = jnp.where(done, vocab.PAD, choose(logits, dcfg, key))
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, t))
        state, logits = lm_step(model, state, tok)
        return t + 1, state, logits, out, done | (tok == vocab.EOS), rng

    init = (jnp.zeros((), jnp.int32), state, logits, jnp.full((B, N), vocab.PAD, jnp.int32),
            jnp.zeros((B,), bool), rng)
    steps, _, _, out, _, _ = jax.lax.while_loop(cond, body, init)
    return out, steps


def run_lm(model, prompts: Sequence[Any], dcfg: DecodeConfig, rng: Array | None = None):
    """Greedy / sampling for the causal archs; -> (tokens [B, N] int32, steps actually run)."""
    prompt = prompt_batch(model.cfg.arch, prompts)
    check_lengths(model, prompt, dcfg.max_new_tokens)
    graphdef, params = nnx.split(model)
    rng = jax.random.key(0) if rng is None else rng
    return _sample_jit(graphdef, params, prompt, rng, dcfg)


def generate(model, prompts: Sequence[Any], cfg: DecodeConfig = DecodeConfig(), rng: Array | None = None,
             target_lengths: Sequence[int] | None = None) -> Array:
    """Generate answers for ``prompts`` with any architecture.  -> int32 [B, cfg.max_new_tokens].

    Dispatches on ``model.cfg.arch``: causal archs use ``cfg.strategy``; ``arch='encoder'`` fills
    ``target_lengths`` MASK slots per row (default ``max_new_tokens``, EOS allowed) in parallel and
    refines them for ``cfg.refine_rounds`` Mask-Predict rounds. Output is PAD after the first EOS.
    """
    if not arch_spec(model.cfg.arch).autoregressive:
        return mask_fill(model, prompts, cfg.max_new_tokens, target_lengths, cfg.refine_rounds)[0]
    if target_lengths is not None:
        raise ValueError("target_lengths only applies to arch='encoder'")
    if cfg.strategy == "beam":
        return beam_search(model, prompts, cfg)[0]
    return run_lm(model, prompts, cfg, rng)[0]


# ---- encoder: parallel mask filling + Mask-Predict refinement ------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef", "rounds"))
def _mask_fill_jit(graphdef, params, batch, slot_idx, n_slots, rounds: int):
    model = nnx.merge(graphdef, params)
    rows = jnp.arange(slot_idx.shape[0])[:, None]
    valid = jnp.arange(slot_idx.shape[1])[None, :] < n_slots[:, None]  # [B, K]
    write_idx = jnp.where(valid, slot_idx, batch["inputs"].shape[1])  # unused slots: dropped

    def predict(inputs):
        logp = jax.nn.log_softmax(model(dict(batch, inputs=inputs)), axis=-1)
        slot_logp = jnp.take_along_axis(logp, slot_idx[:, :, None], axis=1)  # [B, K, V]
        return jnp.argmax(slot_logp, -1).astype(jnp.int32), jnp.max(slot_logp, -1)

    tokens, conf = predict(batch["inputs"])
    history, remasked = [tokens], []
    for r in range(1, rounds + 1):
        # Mask-Predict: re-mask the n least confident slots, n decreasing linearly to 0.
        n = (n_slots * (rounds + 1 - r)) // (rounds + 1)
        rank = jnp.argsort(jnp.argsort(jnp.where(valid, conf, jnp.inf), axis=1), axis=1)
        mask = valid & (rank < n[:, None])
        inputs = batch["inputs"].at[rows, write_idx].set(jnp.where(mask, vocab.MASK, tokens), mode="drop")
        new_tokens, new_conf = predict(inputs)
        tokens, conf = jnp.where(mask, new_tokens, tokens), jnp.where(mask, new_conf, conf)
        history.append(tokens)
        remasked.append(mask)
    return tokens, jnp.stack(history), jnp.stack(remasked) if remasked else jnp.zeros((0,) + tokens.shape, bool)


def mask_fill(model, prompts: Sequence[Any], max_new: int, target_lengths: Sequence[int] | None = None,
              rounds: int = 0) -> tuple[Array, dict]:
    """Encoder-only answers: ``BOS x SEP MASK*k`` (formatter layout, right-padded), all k slots
    predicted in one pass (argmax), then ``rounds`` Mask-Predict rounds (Ghazvininejad et al. 2019):
    round r = 1..R re-masks the ``floor(k (R + 1 - r) / (R + 1))`` least confident slots and
    re-predicts only them (confidence = log-prob of the chosen token).

    -> (tokens [B, max_new] PAD after EOS, info) with info["history"] [R+1, B, K] (tokens after each
    round, before EOS padding) and info["remasked"] [R, B, K] (which slots each round re-masked).
    """
    xs = prompt_arrays(prompts)
    ks = [max_new] * len(xs) if target_lengths is None else [int(k) for k in target_lengths]
    if len(ks) != len(xs) or min(ks) < 1 or max(ks) > max_new:
        raise ValueError(f"target_lengths must give 1..max_new_tokens={max_new} slots per prompt, got {ks}")
    T = max(x.size + 2 + k for x, k in zip(xs, ks))
    if T > model.cfg.max_len and model.cfg.pos_encoding == "learned":
        raise ValueError(f"encoder layout needs {T} positions > model.max_len={model.cfg.max_len}")
    B, K = len(xs), max(ks)
    batch = {k: np.zeros((B, T), np.int32) for k in ("inputs", "segment_ids", "positions")}
    slot_idx = np.zeros((B, K), np.int32)
    for b, (x, k) in enumerate(zip(xs, ks)):
        L = x.size + 2 + k
        batch["inputs"][b, :L] = np.concatenate([[vocab.BOS], x, [vocab.SEP], np.full(k, vocab.MASK)])
        batch["segment_ids"][b, :L], batch["positions"][b, :L] = 1, np.arange(L)
        slot_idx[b] = np.minimum(x.size + 2 + np.arange(K), L - 1)
    check_token_ids(batch["inputs"], model.cfg.vocab_size, "inputs")
    graphdef, params = nnx.split(model)
    tokens, history, remasked = _mask_fill_jit(graphdef, params, batch, slot_idx, np.asarray(ks, np.int32), rounds)
    tokens = jnp.where(jnp.arange(K)[None] < jnp.asarray(ks)[:, None], tokens, vocab.PAD)
    out = jnp.full((B, max_new), vocab.PAD, jnp.int32).at[:, :K].set(pad_after_eos(tokens))
    return out, {"history": history, "remasked": remasked}


# ---- teacher forcing -------------------------------------------------------------------------------
def teacher_forced_logprobs(model, batch: dict) -> Array:
    """log p(correct target token) at every position of an eval batch (formatter task layout, e.g.
    from ``archcmp.data.pipeline.eval_batches``), for any architecture.  -> float32 [B, T], 0.0
    where ``batch["eval_weights"]`` is 0 (so ``.sum()`` is the answers' total log-likelihood)."""
    logp = jax.nn.log_softmax(model(batch), axis=-1)
    lp = jnp.take_along_axis(logp, jnp.asarray(batch["targets"])[..., None], axis=-1)[..., 0]
    return jnp.where(jnp.asarray(batch["eval_weights"]) > 0, lp, 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _teacher_forced_jit(graphdef, params, batch):
    return teacher_forced_logprobs(nnx.merge(graphdef, params), batch)


def answer_logprobs(model, examples: Sequence[Example], seq_len: int | None = None,
                    rows: int | None = None) -> list[np.ndarray]:
    """Per-example log-probs of each target token (one example per row).  -> list of float32 [m].

    One compiled forward pass per batch shape: ``seq_len`` (>= every example's footprint; default
    the longest) and ``rows`` (>= len(examples); default len(examples)) fix that shape, so callers
    scoring many batches of varying length pay for one compilation. Padding rows and positions
    carry no eval weight and leave the real rows' numbers unchanged (up to float rounding)."""
    from archcmp.data.formatters import make_formatter
    need = max(ex.footprint for ex in examples)
    seq_len = need if seq_len is None else seq_len
    if seq_len < need:
        raise ValueError(f"answer_logprobs: seq_len={seq_len} < longest example footprint {need}")
    if rows is not None and rows < len(examples):
        raise ValueError(f"answer_logprobs: rows={rows} < {len(examples)} examples")
    fmt = make_formatter(model.cfg.arch, seq_len)
    batch = fmt([[ex] for ex in examples], rows)
    graphdef, params = nnx.split(model)
    lp = np.asarray(_teacher_forced_jit(graphdef, params, batch))
    return [lp[b][batch["eval_weights"][b] > 0] for b in range(len(examples))]
