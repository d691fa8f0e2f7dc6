"""Experiment tracking behind one small interface (levanter style).

The interface (:class:`~archcmp.tracking.base.Tracker`) and the shared file helpers live in
:mod:`archcmp.tracking.base` (re-exported here); this module holds the backends that need nothing
beyond the standard library:

* :class:`JsonlTracker` -- always on. ``metrics.jsonl`` (one JSON object per ``log`` call, flushed
  per line) and ``summary.json`` (written atomically) inside the run directory.
* :class:`NullTracker` / :class:`MultiTracker`.
* :func:`make_tracker` -- builds a run's tracker from ``logger.kind``; :func:`run_tracker` builds a
  training run's tracker from its typed :class:`LoggerSettings` (the ``logger`` config group).

The Weights & Biases backend lives in :mod:`archcmp.tracking.wandb_tracker`, imported only when a run asks
for it.

Typical use::

    tracker = make_tracker("wandb", run_dir, resume_step=start_step, project="archcmp", ...)
    with tracker:                        # finish("complete") / ("failed") / ("interrupted")
        tracker.log({"loss": loss}, step=step)
        tracker.log_summary({"final_eval_loss": ev})
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from archcmp.tracking.base import (Tracker, TrackerBase, atomic_write_json, read_jsonl, status_for_exception,
                                   to_jsonable)

log = logging.getLogger(__name__)

__all__ = ["JsonlTracker", "MultiTracker", "NullTracker", "Tracker", "TrackerBase", "atomic_write_json",
           "make_tracker", "read_jsonl", "read_summary", "status_for_exception", "to_jsonable"]


# ------------------------------------------------------------------------------------------ jsonl
def read_summary(run_dir: str | Path) -> dict:
    """A run directory's ``summary.json`` ({} when absent); opens nothing for writing."""
    path = Path(run_dir) / JsonlTracker.SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


class JsonlTracker(TrackerBase):
    """``run_dir/metrics.jsonl`` + ``run_dir/summary.json``.

    ``log_summary`` merges into the existing summary (like ``wandb.run.summary.update``) and
    rewrites the file atomically. ``finish(status)`` records ``"status"`` in the summary when
    ``record_status`` is true. ``log_files`` copies files that are not already inside ``run_dir``
    into ``run_dir/files/`` and indexes them in ``run_dir/files.json``.
    """

    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"

    def __init__(self, run_dir: str | Path, *, fsync: bool = False, record_status: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / self.METRICS
        self.summary_path = self.run_dir / self.SUMMARY
        self.fsync = fsync
        self.record_status = record_status
        self._repair_tail()
        self._f = None  # metrics.jsonl is opened (created) by the first log(), not by reading a summary

    def _metrics_file(self):
        if self._f is None or self._f.closed:
            self._f = open(self.metrics_path, "a")
        return self._f

    def _repair_tail(self) -> None:
        """Drop a partial last line left by a killed run so appends stay line-aligned."""
        data = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1  # 0 if there is no complete line at all
        with open(self.metrics_path, "r+b") as f:
            f.truncate(cut)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        row = {"step": int(step), **{str(k): to_jsonable(v) for k, v in metrics.items() if k != "step"}}
        f = self._metrics_file()
        f.write(json.dumps(row) + "\n")
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> int:
        """Drop rows with ``step > step`` (resuming from a checkpoint). Returns rows dropped."""
        self._close_metrics()
        if not self.metrics_path.exists():
            return 0
        rows = read_jsonl(self.metrics_path)
        keep = [r for r in rows if int(r.get("step", -1)) <= step]
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=self.run_dir)
        with os.fdopen(fd, "w") as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.metrics_path)
        return len(rows) - len(keep)

    def read_summary(self) -> dict:
        return read_summary(self.run_dir)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        merged = self.read_summary()
        merged.update(to_jsonable(dict(summary)))
        atomic_write_json(self.summary_path, merged)

    def log_files(self, paths: Mapping[str, Path]) -> None:
        index_path = self.run_dir / "files.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        root = self.run_dir.resolve()
        for key, p in paths.items():
            p = Path(p).resolve()
            if not p.is_relative_to(root):
                dest = self.run_dir / "files" / p.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dest)
                p = dest.resolve()
            index[str(key)] = str(p.relative_to(root))
        atomic_write_json(index_path, index)

    def _close_metrics(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.flush()
            self._f.close()

    def finish(self, status: str = "complete") -> None:
        self._close_metrics()
        if self.record_status:
            self.log_summary({"status": status})


# ------------------------------------------------------------------------------------------- null
class NullTracker(TrackerBase):
    """Does nothing."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...
    def log_summary(self, summary: Mapping[str, Any]) -> None: ...
    def log_files(self, paths: Mapping[str, Path]) -> None: ...
    def finish(self, status: str = "complete") -> None: ...


# ------------------------------------------------------------------------------------------ multi
class MultiTracker(TrackerBase):
    """Fans every call out to its children; ``finish`` reaches every child even if one raises."""

    def __init__(self, *trackers: Tracker):
        self.trackers = [t for t in trackers if t is not None]

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_summary(summary)

    def log_files(self, paths: Mapping[str, Path]) -> None:
        for t in self.trackers:
            t.log_files(paths)

    def finish(self, status: str = "complete") -> None:
        first: BaseException | None = None
        for t in self.trackers:
            try:
                t.finish(status)
            except Exception as e:  # noqa: BLE001
                first = first or e
        if first is not None:
            raise first

    def truncate_after(self, step: int) -> None:
        for t in self.trackers:
            if hasattr(t, "truncate_after"):
                t.truncate_after(step)


# --------------------------------------------------------------------------------------- factory
def make_tracker(
    kind: str,
    run_dir: str | Path | None,
    *,
    resume_step: int | None = None,
    record_status: bool = True,
    **wandb_kwargs: Any,
) -> Tracker:
    """Build the run's tracker. ``kind`` is ``"none" | "jsonl" | "wandb"``.

    The jsonl tracker is always included when ``run_dir`` is given (``"none"`` only means "no
    external backend"); with ``run_dir=None`` and ``kind="none"`` the result is a pure no-op.
    ``resume_step`` drops metrics rows logged after that step by an earlier attempt.
    ``record_status=False``: ``finish()`` leaves ``summary.json`` alone (the trainer writes the
    whole summary, status included, in one atomic write, so no reader ever sees a summary that
    says ``complete`` without the rest of the record).
    ``wandb_kwargs`` go to :class:`archcmp.tracking.wandb_tracker.WandbTracker` (``dir`` defaults to
    ``run_dir``).
    """
    kind = (kind or "none").lower()
    if kind not in ("none", "jsonl", "wandb"):
        raise ValueError(f"unknown tracker kind {kind!r}; expected none|jsonl|wandb")
    trackers: list[Tracker] = []
    if run_dir is not None:
        jsonl = JsonlTracker(run_dir, record_status=record_status)
        if resume_step is not None:
            jsonl.truncate_after(resume_step)
        trackers.append(jsonl)
    if kind == "wandb":
        from archcmp.tracking.wandb_tracker import WandbTracker

        wandb_kwargs.setdefault("dir", run_dir)
        wb = WandbTracker(**wandb_kwargs)
        if wandb_kwargs.get("run_id") and run_dir is not None:  # a relaunch continues its wandb run
            wb.resume_from(read_jsonl(Path(run_dir) / JsonlTracker.METRICS), resume_step or 0)
        trackers.append(wb)
    if not trackers:
        return NullTracker()
    if len(trackers) == 1:
        return trackers[0]
    return MultiTracker(*trackers)


@dataclass(frozen=True)
class LoggerSettings:
    """The ``logger`` config group, validated (``archcmp.training.settings.parse_logger``)."""

    kind: str = "jsonl"             # "none" | "jsonl" | "wandb" (the jsonl record is always written)
    project: str = "archcmp"        # wandb only, like the three below
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None        # None: the run's experiment (or its sweep directory's name)


def run_tracker(logger: LoggerSettings, run_dir: Path, *, resume_step: int, name: str, group: str,
                tags: list[str], config: Any, renew_id: bool) -> Tracker:
    """The tracker of one training run: its jsonl record (metrics after ``resume_step`` dropped),
    plus its wandb run when ``logger.kind=wandb``: a stable id kept in the run directory (a new one
    when ``renew_id``: trained again from step 0 with ``train.resume=false``), resumed if it exists."""
    if logger.kind != "wandb":
        return make_tracker(logger.kind, run_dir, resume_step=resume_step, record_status=False)
    from archcmp.tracking.wandb_tracker import stable_run_id

    return make_tracker("wandb", run_dir, resume_step=resume_step, record_status=False, project=logger.project,
                        entity=logger.entity, mode=logger.mode, name=name, group=group, tags=tags,
                        config=to_jsonable(config), job_type="train",
                        run_id=stable_run_id(run_dir, renew=renew_id), resume="allow")
