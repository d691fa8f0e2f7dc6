"""Beam search for the causal architectures (decoder, prefix_lm, encdec), cached or uncached.

Hypotheses are scored by ``log p(y) / lp(|y|)`` with the GNMT / T5 length penalty
``lp(n) = ((5 + n) / 6) ** alpha`` (Wu et al. 2016; ``DecodeConfig.length_penalty`` = alpha, n = number
of generated tokens including EOS). alpha = 0 ranks by raw log-probability; alpha > 0 favours longer
answers.

Each step expands the W alive beams of every example into 2W candidates (top log-probabilities
over W x V). As in Hugging Face's ``BeamSearchScorer``, an EOS candidate becomes a finished hypothesis
only if it ranks among the top W candidates; the best W non-EOS candidates stay alive. An example
is done when no alive beam can still beat its best finished hypothesis (log-probabilities only
decrease, so an alive beam's best possible score is ``logp / max lp(n)`` over its reachable
lengths); the loop stops when every example is done or after ``max_new_tokens``. Alive beams
compete with the finished ones at the end (so an example without any EOS still gets an answer).
With ``beam_width=1`` and ``length_penalty=0`` this is exactly greedy decoding.

The repetition penalty (``DecodeConfig.repetition_penalty``) is applied per beam to its own
generated tokens before the log-softmax.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from archcmp.data import vocab
from archcmp.decoding.generate import (DecodeConfig, _check_lengths, lm_start, lm_step, prompt_batch, repetition_penalty,
                            take_rows)

Array = jax.Array


def length_penalty(n: Array | float, alpha: float) -> Array:
    """GNMT / T5 length penalty ((5 + n) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(n, jnp.float32)) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("graphdef", "dcfg"))
def _beam_jit(graphdef, params, prompt, dcfg: DecodeConfig):
    model = nnx.merge(graphdef, params)
    W, N, alpha = dcfg.beam_width, dcfg.max_new_tokens, dcfg.length_penalty
    prompt = jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), W, axis=0), prompt)  # row b*W + w
    state, logits = lm_start(model, prompt, N, dcfg.use_cache)
    BW, V = logits.shape
    B = BW // W
    rank = jnp.arange(2 * W)[None, :]

    def cond(c):
        return (c[0] < N) & ~jnp.all(c[-1])

    def body(c):
        t, state, logits, seq, lp, fseq, fscore, done = c
        logits = repetition_penalty(logits, seq.reshape(BW, N), t, dcfg.repetition_penalty)
        logp = rearrange(jax.nn.log_softmax(logits, axis=-1), "(b w) v -> b w v", w=W)  # [B, W, V]
        top_lp, top_i = jax.lax.top_k(rearrange(lp[:, :, None] + logp, "b w v -> b (w v)"), 2 * W)  # [B, 2W]
        parent, tok = top_i // V, (top_i % V).astype(jnp.int32)
        cseq = jnp.take_along_axis(seq, parent[:, :, None], axis=1)
        cseq = jax.lax.dynamic_update_slice(cseq, tok[:, :, None], (0, 0, t))  # [B, 2W, N]
        eos = tok == vocab.EOS
        # finished: EOS candidates among the top W join the W best finished hypotheses
        score = jnp.where(eos & (rank < W), top_lp / length_penalty(t + 1, alpha), -jnp.inf)
        fscore, fi = jax.lax.top_k(jnp.concatenate([fscore, score], axis=1), W)
        fseq = jnp.take_along_axis(jnp.concatenate([fseq, cseq], axis=1), fi[:, :, None], axis=1)
        # alive: the W best non-EOS candidates (each parent has one EOS candidate, so >= W remain)
        lp, ai = jax.lax.top_k(jnp.where(eos, -jnp.inf, top_lp), W)
        seq = jnp.take_along_axis(cseq, ai[:, :, None], axis=1)
        rows = (jnp.arange(B)[:, None] * W + jnp.take_along_axis(parent, ai, axis=1)).reshape(-1)
        state, logits = lm_step(model, take_rows(state, rows), jnp.take_along_axis(tok, ai, axis=1).reshape(-1))
        best_possible = lp[:, 0] / jnp.maximum(length_penalty(t + 2, alpha), length_penalty(N, alpha))
        done = done | (fscore[:, 0] >= best_possible)
        return t + 1, state, logits, seq, lp, fseq, fscore, done

    pad = jnp.full((B, W, N), vocab.PAD, jnp.int32)
    alive_lp = jnp.tile(jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf)[None], (B, 1))  # expand beam 0 first
    init = (jnp.zeros((), jnp.int32), state, logits, pad, alive_lp, pad, jnp.full((B, W), -jnp.inf),
            jnp.zeros((B,), bool))
    steps, _, _, seq, lp, fseq, fscore, _ = jax.lax.while_loop(cond, body, init)
    scores = jnp.concatenate([fscore, lp / length_penalty(steps, alpha)], axis=1)
    best = jnp.argmax(scores, axis=1)
    tokens = jnp.take_along_axis(jnp.concatenate([fseq, seq], axis=1), best[:, None, None], axis=1)[:, 0]
    return tokens, jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]


def beam_search(model, prompts: Sequence[Any], dcfg: DecodeConfig) -> tuple[Array, Array]:
    """Best beam per prompt.  -> (tokens int32 [B, max_new] PAD after EOS, length-penalised score [B])."""
    if model.cfg.arch == "encoder":
        raise ValueError("beam search needs a causal architecture; arch='encoder' uses mask filling")
    prompt = prompt_batch(model.cfg.arch, prompts)
    _check_lengths(model, prompt, dcfg.max_new_tokens)
    graphdef, params = nnx.split(model)
    return _beam_jit(graphdef, params, prompt, dcfg)
