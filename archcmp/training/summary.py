"""A training run's ``summary.json``: the :class:`RunSummary` of one model, filled in once the run
ends (complete, failed or interrupted) and written in one place (:meth:`RunSummary.write`).

The JSON keys are a contract with the tests, the sweep report and every analysis command; the
dataclass fields are those keys, in the order they appear in the file (``placement`` spreads its
``mesh``/``devices``/``processes``/``platform`` at the top level; ``ensemble`` appears only for a
member of a ``train.num_seeds=k`` group).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archcmp.model.config import ConfigError


@dataclass
class RunSummary:
    # what was trained (known before the first step)
    arch: str
    size: str
    task: str
    objective: str
    seed: int
    experiment: str
    run_name: str
    steps: int
    batch_size: int
    seq_len: int
    params_total: int
    params_nonembedding: int
    model: dict
    resumed_from: int | None
    status: str = "running"
    placement: dict = field(default_factory=dict)  # mesh, devices, processes, platform
    ensemble: dict | None = None                   # num_seeds, member, seeds, group_dir (k > 1 only)
    # how it went (filled in by finish())
    error: str | None = None
    error_kind: str | None = None
    step: int = 0
    train_tokens: int = 0
    train_flops: int = 0
    flops_per_token: float = 0.0
    eval_loss: float | None = None
    best_eval_loss: float | None = None
    eval_metrics: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    examples_seen: int = 0
    examples_dropped: int = 0
    tokens_per_sec: float | None = None
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    # how it ended (a finished run): the last step, and train.steps reached or train.early_stop met
    stopped_at: int | None = None
    stop_reason: str | None = None
    early_stop: dict | None = None  # the rule and the step this run met it (train.early_stop set only)

    def finish(self, **outcome: Any) -> "RunSummary":
        """The summary with the run's outcome (status, error, counters, last evaluation) filled in."""
        return dataclasses.replace(self, **outcome)

    def as_dict(self) -> dict[str, Any]:
        """The ``summary.json`` record, keys in file order."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "placement":
                out.update(value)
            elif f.name not in ("ensemble", "early_stop") or value is not None:
                out[f.name] = value
        return out

    def write(self, run_dir: Path, tracker: Any) -> dict[str, Any]:
        """Write the record to ``run_dir/summary.json`` and hand it to the run's tracker (wandb's
        summary); returns it as written."""
        from archcmp.tracking.tracker import JsonlTracker, to_jsonable

        record = to_jsonable(self.as_dict())
        JsonlTracker(run_dir, record_status=False).log_summary(record)
        tracker.log_summary(record)
        return self.as_dict()


def error_fields(err: BaseException) -> dict[str, str]:
    """How a failure goes into summary.json: ``error``, the text for people, and ``error_kind``,
    for programs (the sweep report): ``"config"`` for a bad setting, else the exception's class."""
    kind = "config" if isinstance(err, ConfigError) else type(err).__name__
    return {"error": f"{type(err).__name__}: {err}", "error_kind": kind}
