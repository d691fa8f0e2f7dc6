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
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.model.models import check_token_ids

Array = jax.Array
STRATEGIES = ("greedy", "sample", "beam")
_CAUSAL = ("decoder", "prefix_lm", "encdec")


@dataclass(frozen=True)
class DecodeConfig:
    """How to generate. Hashable: it is a static argument of the jitted loops."""

    strategy: str = "greedy"  # greedy | sample | beam (ignored by arch='encoder')
    max_new_tokens: int = 32
    temperature: float = 1.0  # sample only; 0 means greedy
    top_k: int = 0  # sample only; 0 = off
    top_p: float = 1.0  # sample only; 1 = off
    repetition_penalty: float = 1.0  # CTRL style; 1 = off
    beam_width: int = 4
    length_penalty: float = 0.6  # GNMT/T5 alpha; 0 = raw log-probability
    use_cache: bool = True
    refine_rounds: int = 0  # encoder only: Mask-Predict re-masking rounds after the parallel pass

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decode.strategy={self.strategy!r}: choose one of {list(STRATEGIES)}")
        for name, lo in (("max_new_tokens", 1), ("beam_width", 1), ("top_k", 0), ("refine_rounds", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"decode.{name}={value!r}: must be an integer >= {lo}")
        if self.temperature < 0:
            raise ValueError(f"decode.temperature={self.temperature!r}: must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"decode.top_p={self.top_p!r}: must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError(f"decode.repetition_penalty={self.repetition_penalty!r}: must be > 0")


# ---- prompts -----------------------------------------------------------------------------
def _as_inputs(prompts: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(p.inputs if isinstance(p, Example) else p, np.int32).reshape(-1) for p in prompts]


def prompt_batch(arch: str, prompts: Sequence[Any]) -> dict[str, np.ndarray]:
    """Causal-arch prompts as arrays. decoder / prefix_lm: left-padded ``BOS x SEP`` [B, P] with
    formatter positions; encdec: right-padded encoder ``x`` [B, S] (as the formatter lays it out)."""
    xs = _as_inputs(prompts)
    B = len(xs)
    if arch == "encdec":
        S = max(1, max(x.size for x in xs))
        out = {k: np.zeros((B, S), np.int32) for k in ("enc_inputs", "enc_segment_ids", "enc_positions")}
        for b, x in enumerate(xs):
            out["enc_inputs"][b, :x.size], out["enc_segment_ids"][b, :x.size] = x, 1
            out["enc_positions"][b, :x.size] = np.arange(x.size)
        return out
    seqs = [np.concatenate([[vocab.BOS], x, [vocab.SEP]]).astype(np.int32) for x in xs]
    P = max(s.size for s in seqs)
    out = {k: np.zeros((B, P), np.int32) for k in ("inputs", "segment_ids", "positions")}
    for b, s in enumerate(seqs):
        out["inputs"][b, P - s.size:], out["segment_ids"][b, P - s.size:] = s, 1
        out["positions"][b, P - s.size:] = np.arange(s.size)
    out["prefix_mask"] = out["segment_ids"] > 0  # the whole prompt is the prefix (prefix_lm only)
    out["lengths"] = np.array([s.size for s in seqs], np.int32)
    return out


def _check_lengths(model, prompt: dict, max_new: int) -> None:
    """Host-side checks before the jitted loop: token ids inside the vocabulary, lengths inside max_len."""
    cfg = model.cfg
    for key in ("inputs", "enc_inputs"):
        if key in prompt:
            check_token_ids(prompt[key], cfg.vocab_size, key)
    longest = int(prompt["lengths"].max()) if "lengths" in prompt else 1
    if cfg.pos_encoding in ("learned", "sinusoidal") and longest + max_new - 1 > cfg.max_len:
        raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({max_new}) exceed model.max_len={cfg.max_len}")


# ---- one causal-LM step: start (prefill) and step, cached or uncached -------------------------
def lm_start(model, prompt: dict, max_new: int, use_cache: bool) -> tuple[dict, Array]:
    """Run the prompt; -> (state, logits [B, V] predicting the first new token).

    ``prompt`` is :func:`prompt_batch` output (jnp or np). The state holds the KV cache (or the
    full token buffer when ``use_cache=False``) and each row's next position.
    """
    arch = model.cfg.arch
    if arch == "encdec":
        memory = model.encode(prompt["enc_inputs"], prompt["enc_segment_ids"], prompt["enc_positions"])
        B = memory.shape[0]
        first = {"inputs": jnp.full((B, 1), vocab.BOS, jnp.int32), "segment_ids": jnp.ones((B, 1), jnp.int32),
                 "positions": jnp.zeros((B, 1), jnp.int32)}
        state = {"next_pos": jnp.ones((B,), jnp.int32)}
        if use_cache:
            logits, state["cache"] = model(first, cache=model.init_cache(memory, prompt["enc_segment_ids"],
                                                                         max_new + 1))
            return state, logits[:, -1]
        state.update(memory=memory, enc_segment_ids=prompt["enc_segment_ids"], slot=jnp.zeros((), jnp.int32),
                     buf=_buffer(first, max_new))
        return state, model.decode(memory, dict(state["buf"], enc_segment_ids=state["enc_segment_ids"]))[:, 0]
    first = {k: jnp.asarray(prompt[k]) for k in ("inputs", "segment_ids", "positions", "prefix_mask")}
    B, P = first["inputs"].shape
    state = {"next_pos": jnp.asarray(prompt["lengths"], jnp.int32)}
    if use_cache:
        logits, state["cache"] = model(first, cache=model.init_cache(B, P + max_new))
        return state, logits[:, -1]
    state.update(slot=jnp.asarray(P - 1, jnp.int32), buf=_buffer(first, max_new))
    return state, model(state["buf"])[:, P - 1]


def _buffer(first: dict, max_new: int) -> dict:
    """Prompt followed by ``max_new`` empty (segment 0) slots."""
    return {k: jnp.pad(v, ((0, 0), (0, max_new))) for k, v in first.items()}


def lm_step(model, state: dict, tokens: Array) -> tuple[dict, Array]:
    """Append ``tokens`` [B] (one per row); -> (state, logits [B, V] predicting the next token)."""
    B = tokens.shape[0]
    pos = state["next_pos"]
    new = {"inputs": tokens[:, None].astype(jnp.int32), "segment_ids": jnp.ones((B, 1), jnp.int32),
           "positions": pos[:, None]}
    if model.cfg.arch != "encdec":
        new["prefix_mask"] = jnp.zeros((B, 1), bool)  # generated tokens are never prefix
    state = dict(state, next_pos=pos + 1)
    if "cache" in state:
        logits, state["cache"] = model(new, cache=state["cache"])
        return state, logits[:, -1]
    slot = state["slot"] + 1
    buf = {k: jax.lax.dynamic_update_slice(v, new[k].astype(v.dtype), (0, slot)) for k, v in state["buf"].items()}
    state.update(slot=slot, buf=buf)
    if model.cfg.arch == "encdec":
        logits = model.decode(state["memory"], dict(buf, enc_segment_ids=state["enc_segment_ids"]))
    else:
        logits = model(buf)
    return state, jax.lax.dynamic_index_in_dim(logits, slot, axis=1, keepdims=False)


def take_rows(state: dict, rows: Array) -> dict:
    """Reorder the batch rows of a decode state (beam search). Encoder-side data is never reordered:
    beams only move within their own example, whose memory is identical."""
    def take(path, x):
        names = {getattr(p, "key", None) for p in path}
        if x.ndim == 0 or names & {"cross", "memory", "enc_segment_ids"}:
            return x
        return jnp.take(x, rows, axis=1 if "self" in names else 0)
    return jax.tree_util.tree_map_with_path(take, state)


# ---- logit processing ------------------------------------------------------------------------
def repetition_penalty(logits: Array, generated: Array, n_written: Array, penalty: float) -> Array:
    """CTRL penalty on tokens in ``generated[:, :n_written]``.  logits [N, V], generated [N, T]."""
    if penalty == 1.0:
        return logits
    N, V = logits.shape
    ids = jnp.where(jnp.arange(generated.shape[1]) < n_written, generated, V)  # V: dropped
    seen = jnp.zeros((N, V), bool).at[jnp.arange(N)[:, None], ids].set(True, mode="drop")
    return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Keep the ``top_k`` largest logits and the smallest set whose probability reaches ``top_p``
    (the top token always survives); the rest become -inf.  [N, V] -> [N, V]."""
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        srt = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # mass before this token < p
        cutoff = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def choose(logits: Array, dcfg: DecodeConfig, key: Array) -> Array:
    """Next token per row: argmax (greedy or temperature 0) or a sample.  [N, V] -> [N]."""
    if dcfg.strategy == "greedy" or dcfg.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / dcfg.temperature, dcfg.top_k, dcfg.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def pad_after_eos(tokens: Array) -> Array:
    """Replace everything after each row's first EOS by PAD.  [B, T] -> [B, T]."""
    after = jnp.cumsum(tokens == vocab.EOS, axis=1) - (tokens == vocab.EOS) > 0
    return jnp.where(after, vocab.PAD, tokens)


# ---- greedy / sampling loop ------------------------------------------------------------------------
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
    _check_lengths(model, prompt, dcfg.max_new_tokens)
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
    arch = model.cfg.arch
    if arch == "encoder":
        return mask_fill(model, prompts, cfg.max_new_tokens, target_lengths, cfg.refine_rounds)[0]
    if target_lengths is not None:
        raise ValueError("target_lengths only applies to arch='encoder'")
    if cfg.strategy == "beam":
        from archcmp.decoding.beam import beam_search
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
    xs = _as_inputs(prompts)
    ks = [max_new] * len(xs) if target_lengths is None else [int(k) for k in target_lengths]
    if len(ks) != len(xs) or min(ks) < 1 or max(ks) > max_new:
        raise ValueError(f"target_lengths must give 1..max_new_tokens={max_new} slots per prompt, got {ks}")
    T = max(x.size + 2 + k for x, k in zip(xs, ks))
    if T > model.cfg.max_len and model.cfg.pos_encoding in ("learned", "sinusoidal"):
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


def answer_logprobs(model, examples: Sequence[Example]) -> list[np.ndarray]:
    """Per-example log-probs of each target token (one example per row).  -> list of float32 [m]."""
    from archcmp.data.formatters import make_formatter
    seq_len = max(ex.footprint for ex in examples)
    fmt = make_formatter(model.cfg.arch, seq_len)
    batch = fmt([[ex] for ex in examples])
    lp = np.asarray(teacher_forced_logprobs(model, batch))
    return [lp[b][batch["eval_weights"][b] > 0] for b in range(len(examples))]
