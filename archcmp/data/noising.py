"""Seeded corruption for the pretraining objectives (numpy only).

* ``mlm_corrupt``: BERT masking. Exactly round(rate * #candidates) (>= 1) candidate positions are
  chosen; with ``replacement="bert"`` (the default) each is replaced by MASK with p=0.8, by a uniform
  random ordinary token with p=0.1, left unchanged with p=0.1; with ``replacement="mask"`` every
  chosen position becomes MASK (the model then never sees a real token where it is scored: the
  train/use mismatch BERT's 80/10/10 was meant to soften).
* ``span_corrupt`` / ``span_reconstruct``: T5 span corruption. round(L * density) noise tokens
  (clamped to [1, L-1]) in round(noise / mean_span) spans (>= 1, <= 16 sentinels, <= number of
  non-noise tokens); spans alternate with non-noise spans starting with a non-noise one.
  inputs = kept tokens with each noise span replaced by its sentinel, targets = sentinel_i +
  span_i for each span. ``span_reconstruct(inputs, targets)`` gives back the original tokens.
"""
from __future__ import annotations

import numpy as np

from archcmp.data import vocab


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


MLM_REPLACEMENTS = ("bert", "mask")  # 80/10/10, or always MASK


def mlm_corrupt(tokens: np.ndarray, candidates: np.ndarray, rng: np.random.Generator, vocab_size: int,
                rate: float = 0.15, replacement: str = "bert") -> tuple[np.ndarray, np.ndarray]:
    """tokens int32[L], candidates bool[L] -> (corrupted int32[L], chosen bool[L])."""
    if replacement not in MLM_REPLACEMENTS:
        raise ValueError(f"mlm replacement must be one of {list(MLM_REPLACEMENTS)}, got {replacement!r}")
    if vocab_size <= vocab.N_SPECIAL:
        raise ValueError(f"mlm needs ordinary tokens: vocab_size {vocab_size} <= {vocab.N_SPECIAL}")
    tokens = np.asarray(tokens, np.int32)
    cand = np.flatnonzero(candidates)
    chosen = np.zeros(tokens.shape, bool)
    out = tokens.copy()
    if cand.size == 0:
        return out, chosen
    k = min(cand.size, max(1, _round(rate * cand.size)))
    pick = np.sort(rng.choice(cand, size=k, replace=False))
    chosen[pick] = True
    if replacement == "mask":
        out[pick] = vocab.MASK
        return out, chosen
    u = rng.random(k)
    rand_tok = rng.integers(vocab.N_SPECIAL, vocab_size, size=k, dtype=np.int32)
    out[pick[u < 0.8]] = vocab.MASK
    rnd = (u >= 0.8) & (u < 0.9)
    out[pick[rnd]] = rand_tok[rnd]
    return out, chosen


def _random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` positive ints summing to ``total`` (uniform over compositions)."""
    if parts == 1:
        return np.array([total])
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_corrupt(tokens: np.ndarray, rng: np.random.Generator, noise_density: float = 0.15,
                 mean_span: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """tokens int32[L] (L >= 1) -> (inputs int32[L - noise + spans], targets int32[noise + spans])."""
    tokens = np.asarray(tokens, np.int32)
    L = tokens.size
    if L == 0:
        raise ValueError("span_corrupt needs at least one token")
    if not 0.0 < noise_density < 1.0 or mean_span < 1.0:
        raise ValueError(f"bad span params: noise_density={noise_density}, mean_span={mean_span}")
    n_noise = min(max(1, _round(L * noise_density)), max(1, L - 1))
    n_keep = L - n_noise
    n_spans = max(1, _round(n_noise / mean_span))
    n_spans = min(n_spans, vocab.N_SENTINELS, n_noise, max(1, n_keep))
    noise_lens = _random_partition(n_noise, n_spans, rng)
    keep_lens = _random_partition(n_keep, n_spans, rng) if n_keep > 0 else np.zeros(1, int)
    inputs, targets, pos = [], [], 0
    for i in range(n_spans):
        inputs.append(tokens[pos:pos + keep_lens[i]])
        pos += keep_lens[i]
        s = np.array([vocab.sentinel(i)], np.int32)
        inputs.append(s)
        targets.append(s)
        targets.append(tokens[pos:pos + noise_lens[i]])
        pos += noise_lens[i]
    inputs.append(tokens[pos:])  # empty: keep spans sum to n_keep
    return np.concatenate(inputs).astype(np.int32), np.concatenate(targets).astype(np.int32)


def span_reconstruct(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Inverse of ``span_corrupt``: put each sentinel's span from ``targets`` back into ``inputs``."""
    targets = np.asarray(targets)
    is_sent = (targets >= vocab.SENTINEL_0) & (targets < vocab.N_SPECIAL)
    starts = np.flatnonzero(is_sent)
    spans = {int(targets[s]): targets[s + 1:e] for s, e in zip(starts, list(starts[1:]) + [targets.size])}
    out = []
    for t in np.asarray(inputs):
        t = int(t)
        out.extend(spans[t].tolist() if t in spans else [t])
    return np.asarray(out, np.int32)
