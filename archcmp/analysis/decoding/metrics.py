"""Diversity and repetition of generated token sequences: pure functions on lists of token ids.

distinct-n      distinct n-grams / all n-grams over a set of generations (Li et al. 2016)
rep-n           share of a generation's n-grams that repeat an earlier n-gram of the same
                generation: 1 - |unique n-grams| / |n-grams| (Welleck et al. 2020's seq-rep-n)
sample entropy  entropy (nats) of the empirical distribution of the whole samples drawn for one
                prompt: 0 when every sample is the same, ln k when k samples all differ
self-overlap    for the samples of one prompt: the mean over ordered pairs (a, b), a != b, of the
                share of a's distinct n-grams that also occur in b (1 = copies, 0 = disjoint)

Sequences are cut at the first EOS (not counted) before scoring; see :func:`strip`.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import numpy as np


def strip(tokens: Sequence[int], eos: int, pad: int | None = None) -> tuple[int, ...]:
    """The tokens before the first ``eos`` (and without ``pad``)."""
    out = []
    for t in tokens:
        t = int(t)
        if t == eos:
            break
        if pad is not None and t == pad:
            continue
        out.append(t)
    return tuple(out)


def ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    if n < 1:
        raise ValueError(f"n={n!r}: must be >= 1")
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(seqs: Iterable[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of ``seqs`` (NaN when no sequence has n tokens)."""
    grams = [g for s in seqs for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def rep_n(seq: Sequence[int], n: int) -> float:
    """Share of the n-grams of one sequence that repeat an earlier one (NaN if shorter than n)."""
    grams = ngrams(seq, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else math.nan


def sample_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Entropy (nats) of the empirical distribution of whole samples."""
    counts = np.asarray(list(Counter(tuple(s) for s in samples).values()), np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def self_overlap(samples: Sequence[Sequence[int]], n: int) -> float:
    """Mean share of one sample's distinct n-grams found in another sample of the same prompt."""
    sets = [set(ngrams(s, n)) for s in samples]
    shares = [len(a & b) / len(a) for i, a in enumerate(sets) for j, b in enumerate(sets) if i != j and a]
    return float(np.mean(shares)) if shares else math.nan


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both x and y (larger is better), by x."""
    pts = [(float(a), float(b), i) for i, (a, b) in enumerate(zip(x, y)) if np.isfinite(a) and np.isfinite(b)]
    front = [i for a, b, i in pts if not any((c >= a and d >= b) and (c > a or d > b) for c, d, _ in pts)]
    return sorted(front, key=lambda i: float(x[i]))
