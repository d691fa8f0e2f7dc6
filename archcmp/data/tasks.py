"""Tasks: deterministic, random-access streams of ``Example`` for (split, seed, index).

Every task implements
  ``size(split) -> int | None``   number of examples in one epoch (None: infinite stream)
  ``example(split, seed, index) -> Example``   the index-th example of that epoch's order
  ``examples(split, seed, start=0, limit=None)``   iterator over the above
and exposes ``name``, ``tokenizer``, ``max_tokens`` (max len(inputs)+len(targets)) and
``pack_by_default`` (short tasks pack several examples per row).

Registry: ``make_task(name, **params)``; unknown names or parameters raise ``ValueError`` naming
the offending key/value. This module holds the interface, the registry and the helpers tasks share;
the tasks register themselves from their own modules: addition, multiplication and modular
(:mod:`archcmp.data.arithmetic_tasks`), recall, induction and infill
(:mod:`archcmp.data.context_tasks`), shakespeare (:mod:`archcmp.data.text_tasks`), and the
classification tasks sum_parity, greater and key_present (:mod:`archcmp.data.downstream`).
"""
from __future__ import annotations

import hashlib
import inspect
from typing import Callable, Iterator, Sequence

import numpy as np

from archcmp.data.example import Example
from archcmp.data.tokenizers import Tokenizer

SPLITS = ("train", "validation", "test")
_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}
HOLDOUT_FRACS = (0.90, 0.05, 0.05)  # train / validation / test share of the hashed item space
_MAX_TRIES = 100_000

_REGISTRY: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def make_task(name: str, **params) -> "Task":
    """Build a registered task; ValueError names the unknown task or parameter."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(task_names())})")
    cls = _REGISTRY[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params:
        if key not in allowed:
            raise ValueError(f"{name}: unknown parameter {key!r} (allowed: {', '.join(allowed)})")
    return cls(**params)


def check_split(split: str) -> int:
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _SPLIT_CODE[split]


def bad_param(task: str, key: str, value, want: str) -> ValueError:
    return ValueError(f"{task}: parameter {key!r} must be {want}, got {value!r}")


def int_range(task: str, key: str, value, lo: int, hi: int) -> tuple[int, int]:
    """Accept an int or a [min, max] pair within [lo, hi]; return (min, max)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise bad_param(task, key, value, f"an int or a [min, max] pair of ints in [{lo}, {hi}]")
    if not lo <= pair[0] <= pair[1] <= hi:
        raise bad_param(task, key, value, f"within [{lo}, {hi}] with min <= max")
    return pair


def task_rng(tag: str, *ints: int) -> np.random.Generator:
    """Generator keyed by a task tag and non-negative ints (seed, split, index, ...)."""
    tag_int = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "little")
    if any(int(i) < 0 for i in ints):
        raise ValueError(f"seeds and indices must be non-negative, got {ints}")
    return np.random.default_rng([tag_int, *[int(i) for i in ints]])


def hashed_split(salt: str, key: bytes) -> str:
    """Deterministic split of an item: blake2b(salt, key) -> uniform in [0,1) -> 90/5/5."""
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8, person=salt.encode()[:16]).digest(), "little") / 2**64
    if u < HOLDOUT_FRACS[0]:
        return "train"
    return "validation" if u < HOLDOUT_FRACS[0] + HOLDOUT_FRACS[1] else "test"


class Task:
    """Base class; see module docstring for the interface."""

    name = "task"
    tokenizer: Tokenizer
    max_tokens: int
    pack_by_default = True

    def size(self, split: str) -> int | None:
        check_split(split)
        return None

    def example(self, split: str, seed: int, index: int) -> Example:
        raise NotImplementedError

    def examples(self, split: str, seed: int, start: int = 0, limit: int | None = None) -> Iterator[Example]:
        n = self.size(split)
        stop = n if limit is None else (start + limit if n is None else min(n, start + limit))
        i = start
        while stop is None or i < stop:
            yield self.example(split, seed, i)
            i += 1


class SampledTask(Task):
    """Infinite stream: example i draws items from rng(seed, split, i) until one hashes into the
    requested split, so train/validation/test are disjoint item sets for every seed."""

    def _draw(self, rng: np.random.Generator):  # -> (hash key bytes, Example)
        raise NotImplementedError

    def example(self, split: str, seed: int, index: int) -> Example:
        code = check_split(split)
        rng = task_rng(self.name, seed, code, index)
        for _ in range(_MAX_TRIES):
            key, ex = self._draw(rng)
            if hashed_split(self.name, key) == split:
                return ex
        raise RuntimeError(f"{self.name}: no item hashes into split {split!r}; widen the parameters")
