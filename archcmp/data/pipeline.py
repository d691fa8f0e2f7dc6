"""Deterministic, checkpointable batch iteration and fixed held-out eval batches.

The example order depends only on (task, split, seed): epoch e reads
``task.example(split, epoch_seed(seed, e), i)`` for i = 0, 1, ... (infinite tasks stay in epoch
0). Fitting (``packing.fit_example``) and row packing use arch-independent footprints, so every
architecture consumes exactly the same examples in the same batches; only the formatter differs.
Objective noise (MLM masking, span corruption) uses ``batch_rng(seed, step)``.

``BatchIterator.state()`` is a small JSON dict (epoch, index of the next unread example, step,
dropped count, fingerprint chain); ``restore(state)`` continues at exactly that example.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from archcmp.data.example import Example
from archcmp.data.fingerprint import Fingerprinter
from archcmp.data.formatters import Formatter, make_formatter
from archcmp.data.packing import fit_example, pack_rows
from archcmp.data.tasks import Task, check_split

_STATE_VERSION = 1
_MAX_CONSECUTIVE_DROPS = 100_000


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s order; epoch 0 uses ``seed`` itself."""
    if epoch == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """Generator for the objective noise of training step ``step``."""
    return np.random.default_rng([int(seed), int(step), 0x6E6F6973])


class BatchIterator:
    """Yields batch dicts ([B, T] arrays, see formatters.py) forever or for ``num_epochs`` epochs.

    packing=None uses ``task.pack_by_default``. ``fit`` is the packing.FIT_POLICIES rule.
    After each ``next()``, ``last_examples`` holds the examples of that batch in row order.
    """

    def __init__(self, task: Task, split: str, seed: int, batch_size: int, formatter: Formatter, *,
                 packing: bool | None = None, fit: str = "drop", num_epochs: int | None = None):
        check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.task, self.split, self.seed, self.batch_size = task, split, int(seed), int(batch_size)
        self.formatter, self.fit, self.num_epochs = formatter, fit, num_epochs
        self.packing = task.pack_by_default if packing is None else bool(packing)
        self.epoch = self.index = self.step = self.dropped = 0
        self._fp = Fingerprinter()
        self.last_examples: list[Example] = []

    # ---- stream --------------------------------------------------------------------------
    def _normalise(self, epoch: int, index: int) -> tuple[int, int] | None:
        """Move past the end of finite epochs; None when ``num_epochs`` is exhausted."""
        n = self.task.size(self.split)
        while n is not None and index >= n:
            if n == 0:
                return None
            epoch, index = epoch + 1, index - n
        if self.num_epochs is not None and epoch >= self.num_epochs:
            return None
        return epoch, index

    def _stream(self) -> Iterator[tuple[tuple[int, int], Example | None]]:
        """Yields (position after this example, fitted example or None if dropped)."""
        pos = self._normalise(self.epoch, self.index)
        drops = 0
        while pos is not None:
            epoch, index = pos
            raw = self.task.example(self.split, epoch_seed(self.seed, epoch), index)
            ex = fit_example(raw, self.formatter.seq_len, self.fit)
            drops = drops + 1 if ex is None else 0
            if drops > _MAX_CONSECUTIVE_DROPS:
                raise ValueError(f"{drops} consecutive examples exceed seq_len {self.formatter.seq_len}")
            yield (epoch, index + 1), ex
            pos = self._normalise(epoch, index + 1)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        T, B = self.formatter.seq_len, self.batch_size
        pos, dropped = (self.epoch, self.index), 0

        def fitted() -> Iterator[Example]:
            """The stream's fitted examples; ``pos`` moves past an example only once pack_rows asks
            for the next one (it placed this one), so the example that did not fit starts the next
            batch. Dropped examples on the way are consumed."""
            nonlocal pos, dropped
            for after, ex in self._stream():
                if ex is not None:
                    yield ex
                else:
                    dropped += 1
                pos = after

        # the one packing rule, shared with the eval batches (packing.pack_rows)
        rows, _ = pack_rows(fitted(), B, T, self.packing)
        if not rows:
            raise StopIteration
        batch = self.formatter(rows, B, batch_rng(self.seed, self.step) if self.formatter.needs_rng else None)
        self.last_examples = [ex for row in rows for ex in row]
        self._fp.update_many(self.last_examples)
        self.epoch, self.index = pos
        self.step += 1
        self.dropped += dropped
        return batch

    # ---- checkpointing -------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Fingerprint of every example emitted so far (identical across architectures)."""
        return self._fp.hexdigest()

    @property
    def examples_seen(self) -> int:
        return self._fp.count

    def state(self) -> dict:
        return {"version": _STATE_VERSION, "task": self.task.name, "split": self.split, "seed": self.seed,
                "epoch": self.epoch, "index": self.index, "step": self.step, "dropped": self.dropped,
                "fingerprint": self._fp.state()}

    def restore(self, state: dict) -> None:
        for key in ("task", "split", "seed"):
            mine = getattr(self, key) if key != "task" else self.task.name
            if state.get(key) != mine:
                raise ValueError(f"iterator state {key}={state.get(key)!r} does not match {mine!r}")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported iterator state version {state.get('version')!r}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.step, self.dropped = int(state["step"]), int(state["dropped"])
        self._fp = Fingerprinter.from_state(state["fingerprint"])


def eval_examples(task: Task, split: str, seq_len: int, num_examples: int, *, seed: int = 0,
                  fit: str = "drop") -> list[Example]:
    """The first ``num_examples`` fitting examples of (split, seed) (fewer if the split is smaller)."""
    out: list[Example] = []
    drops = 0
    for raw in task.examples(split, seed):
        ex = fit_example(raw, seq_len, fit)
        if ex is None:
            drops += 1
            if drops > _MAX_CONSECUTIVE_DROPS:
                raise ValueError(f"{drops} consecutive examples exceed seq_len {seq_len}")
            continue
        drops = 0
        out.append(ex)
        if len(out) == num_examples:
            break
    return out


def eval_batches(task: Task, split: str, arch: str, seq_len: int, batch_size: int, num_examples: int, *,
                 seed: int = 0, enc_len: int | None = None, packing: bool | None = None,
                 fit: str = "drop") -> tuple[list[dict[str, np.ndarray]], list[Example]]:
    """Fixed held-out batches in the *task* layout of ``arch``; same examples for every arch.

    Returns (batches, examples); batches are [B, T] with padding rows where the last is short.
    """
    examples = eval_examples(task, split, seq_len, num_examples, seed=seed, fit=fit)
    pack = task.pack_by_default if packing is None else packing
    return fixed_batches(examples, make_formatter(arch, seq_len, enc_len), batch_size, pack), examples


def fixed_batches(examples: list[Example], formatter: Formatter, batch_size: int,
                  packing: bool) -> list[dict[str, np.ndarray]]:
    """``examples`` in order as fixed batches in ``formatter``'s layout, packed into rows by the same
    :func:`~archcmp.data.packing.pack_rows` as training; a formatter that draws objective noise gets
    the fixed generator ``batch_rng(0, i)`` for batch i, so every evaluation sees the same noise."""
    batches, rest = [], examples
    while rest:
        rows, used = pack_rows(rest, batch_size, formatter.seq_len, packing)
        batches.append(formatter(rows, batch_size, batch_rng(0, len(batches)) if formatter.needs_rng else None))
        rest = rest[used:]
    return batches


class FullBatchIterator(BatchIterator):
    """Full-batch training (``train.batch_size=full``): every step is one whole epoch of a finite
    training split, one example per row (no packing), so the batch is exactly the training set.

    The gradient of a full batch does not depend on the order of its rows, so the batch of epoch 0
    is built once and reused (rebuilt per step only when the formatter draws noise). The
    fingerprint chain absorbs the epoch's own fingerprint once per step,
    ``h_k = sha256(h_{k-1} || epoch digest)``, and ``examples_seen`` grows by the epoch size.
    Same interface as :class:`BatchIterator`; its state is marked ``full_batch``.
    """

    def __init__(self, task: Task, split: str, seed: int, formatter: Formatter, *, fit: str = "drop"):
        check_split(split)
        n = task.size(split)
        if n is None:
            raise ValueError(f"train.batch_size=full: task {task.name!r} has an endless {split!r} stream; "
                             "full-batch training needs a finite split")
        super().__init__(task, split, seed, n, formatter, packing=False, fit=fit)
        raw = list(task.examples(split, epoch_seed(seed, 0)))
        fitted = [fit_example(ex, formatter.seq_len, fit) for ex in raw]
        if any(ex is None for ex in fitted):
            raise ValueError(f"train.batch_size=full: {sum(ex is None for ex in fitted)} of {n} {split} examples "
                             f"do not fit task.seq_len={formatter.seq_len}; raise task.seq_len")
        self.last_examples = fitted
        self._rows = [[ex] for ex in fitted]
        self._cached = None if formatter.needs_rng else formatter(self._rows, n)
        self._epoch_digest = bytes.fromhex(Fingerprinter().update_many(fitted).hexdigest())

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._cached if self._cached is not None else self.formatter(
            self._rows, self.batch_size, batch_rng(self.seed, self.step))
        self._fp.absorb(self._epoch_digest, self.batch_size)
        self.step += 1
        self.epoch = self.step  # one epoch per step
        return batch

    def state(self) -> dict:
        return {**super().state(), "full_batch": True}

    def restore(self, state: dict) -> None:
        if not state.get("full_batch"):
            raise ValueError("iterator state is not from full-batch training (train.batch_size=full); "
                             "resume with the batch size the run was started with")
        super().restore(state)
