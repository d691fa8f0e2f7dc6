"""The training loop's per-model bookkeeping: a :class:`Member` is one model's run record (its
settings, directory, data order, checkpoints, tracker, counters), and :func:`next_batches` is the
host side of one step for every member."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from archcmp.training.steps import split_microbatches


def next_batches(members: list, accum: int) -> tuple[list, list[int], list[dict]]:
    """The host side of one step for every member: its next batch ``[A, B/A, ...]``, the example
    tokens in it, and the data position after it (recorded only once the step has run)."""
    batches, tokens, positions = [], [], []
    for mem in members:
        batches.append(split_microbatches(next(mem.data), accum))
        tokens.append(sum(int(ex.inputs.size + ex.targets.size) for ex in mem.data.last_examples))
        positions.append(mem.data.state())
    return batches, tokens, positions


class Member:
    """One model's run record: settings (its seed), directory, data order, checkpoints, tracker."""

    def __init__(self, s: Any, run_dir: Path, data: Any, ckpt: Any):
        self.s, self.run_dir, self.data, self.ckpt = s, run_dir, data, ckpt
        self.counters = {"train_tokens": 0, "train_seconds": 0.0, "best_eval_loss": math.inf}
        self.resumed_from: int | None = None
        self.tracker: Any = None
        self.base_key: Any = None
        self.summary: dict[str, Any] = {}
        self.last_eval: dict[str, float] = {}
        self.steady_tokens, self.steady_time = 0, 0.0
        self.position: dict[str, Any] = data.state()  # data iterator state after the last step that ran

    @property
    def tps(self) -> float:
        return self.steady_tokens / self.steady_time if self.steady_time > 0 else 0.0
