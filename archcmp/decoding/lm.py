"""The causal-LM decoding machinery shared by sampling and beam search: the decoding settings,
prompt batches laid out as the formatters lay them out, the host-side length and token checks,
one prefill / one step (cached or uncached), and the logit processing.

Shapes: B rows, P prompt length, N new tokens, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.model.archs import arch_spec
from archcmp.model.models import check_token_ids

Array = jax.Array
STRATEGIES = ("greedy", "sample", "beam")


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
def prompt_arrays(prompts: Sequence[Any]) -> list[np.ndarray]:
    """Each prompt (an Example: its ``inputs``; or an int array) as a flat int32 array."""
    return [np.asarray(p.inputs if isinstance(p, Example) else p, np.int32).reshape(-1) for p in prompts]


def prompt_batch(arch: str, prompts: Sequence[Any]) -> dict[str, np.ndarray]:
    """Causal-arch prompts as arrays. decoder / prefix_lm: left-padded ``BOS x SEP`` [B, P] with
    formatter positions; encdec: right-padded encoder ``x`` [B, S] (as the formatter lays it out)."""
    xs = prompt_arrays(prompts)
    B = len(xs)
    if arch_spec(arch).encoder_stack:
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


def check_lengths(model, prompt: dict, max_new: int) -> None:
    """Host-side checks before the jitted loop: token ids inside the vocabulary, lengths inside max_len."""
    cfg = model.cfg
    for key in ("inputs", "enc_inputs"):
        if key in prompt:
            check_token_ids(prompt[key], cfg.vocab_size, key)
    longest = int(prompt["lengths"].max()) if "lengths" in prompt else 1
    if cfg.pos_encoding == "learned" and longest + max_new - 1 > cfg.max_len:
        raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({max_new}) exceed model.max_len={cfg.max_len}")


# ---- one causal-LM step: start (prefill) and step, cached or uncached -------------------------
def lm_start(model, prompt: dict, max_new: int, use_cache: bool) -> tuple[dict, Array]:
    """Run the prompt; -> (state, logits [B, V] predicting the first new token).

    ``prompt`` is :func:`prompt_batch` output (jnp or np). The state holds the KV cache (or the
    full token buffer when ``use_cache=False``) and each row's next position.
    """
    arch = model.cfg.arch
    if arch_spec(arch).encoder_stack:
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
    if not arch_spec(model.cfg.arch).encoder_stack:
        new["prefix_mask"] = jnp.zeros((B, 1), bool)  # generated tokens are never prefix
    state = dict(state, next_pos=pos + 1)
    if "cache" in state:
        logits, state["cache"] = model(new, cache=state["cache"])
        return state, logits[:, -1]
    slot = state["slot"] + 1
    buf = {k: jax.lax.dynamic_update_slice(v, new[k].astype(v.dtype), (0, slot)) for k, v in state["buf"].items()}
    state.update(slot=slot, buf=buf)
    if arch_spec(model.cfg.arch).encoder_stack:
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
