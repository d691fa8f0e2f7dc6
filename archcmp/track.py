"""Experiment tracking behind one small interface (levanter style).

Backends:

* :class:`JsonlTracker` -- always on. ``metrics.jsonl`` (one JSON object per ``log`` call, flushed
  per line) and ``summary.json`` (written atomically) inside the run directory.
* :class:`WandbTracker` -- Weights & Biases, ``mode="offline"`` by default. Any wandb failure
  (import, init, network, logging) warns once and turns the tracker into a no-op: tracking must
  never stop training.
* :class:`NullTracker` / :class:`MultiTracker`.

Typical use::

    tracker = make_tracker("wandb", run_dir, resume_step=start_step, project="archcmp", ...)
    with tracker:                        # finish("complete") / ("failed") / ("interrupted")
        tracker.log({"loss": loss}, step=step)
        tracker.log_summary({"final_eval_loss": ev})
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}
TABLE_SUFFIXES = {".csv", ".tsv"}


@runtime_checkable
class Tracker(Protocol):
    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...
    def log_summary(self, summary: Mapping[str, Any]) -> None: ...
    def log_files(self, paths: Mapping[str, Path]) -> None: ...
    def finish(self, status: str = "complete") -> None: ...


def status_for_exception(exc: BaseException | None) -> str:
    """Run status for a ``finally`` block: ``complete`` / ``interrupted`` / ``failed``."""
    if exc is None:
        return "complete"
    return "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"


class _TrackerBase:
    """Context-manager support: ``with tracker: ...`` finishes with the right status."""

    def finish(self, status: str = "complete") -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish(status_for_exception(exc))
        return False


def to_jsonable(value: Any) -> Any:
    """Convert jax/numpy scalars and arrays (and containers of them) to plain Python values.

    Size-1 arrays become scalars, larger arrays become (nested) lists. NaN/inf are kept as floats
    (``json`` writes them as ``NaN``/``Infinity``, which ``json.loads`` reads back).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__") and hasattr(value, "shape"):  # np.ndarray, jax.Array
        arr = np.asarray(value)
        return arr.item() if arr.size == 1 else arr.tolist()
    return str(value)


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file; an unterminated/garbled trailing line (killed run) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in filter(None, map(str.strip, path.read_text().splitlines())):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping unreadable line in %s", path)
    return rows


# ------------------------------------------------------------------------------------------ jsonl
def read_summary(run_dir: str | Path) -> dict:
    """A run directory's ``summary.json`` ({} when absent); opens nothing for writing."""
    path = Path(run_dir) / JsonlTracker.SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


class JsonlTracker(_TrackerBase):
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
        _atomic_write_json(self.summary_path, merged)

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
        _atomic_write_json(index_path, index)

    def _close_metrics(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.flush()
            self._f.close()

    def finish(self, status: str = "complete") -> None:
        self._close_metrics()
        if self.record_status:
            self.log_summary({"status": status})


# ------------------------------------------------------------------------------------------- null
class NullTracker(_TrackerBase):
    """Does nothing."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...
    def log_summary(self, summary: Mapping[str, Any]) -> None: ...
    def log_files(self, paths: Mapping[str, Path]) -> None: ...
    def finish(self, status: str = "complete") -> None: ...


# ------------------------------------------------------------------------------------------ multi
class MultiTracker(_TrackerBase):
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


# ------------------------------------------------------------------------------------------ wandb
def _plain_config(config: Any) -> Any:
    if config is None:
        return None
    try:  # Hydra / OmegaConf configs
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(config, (DictConfig, ListConfig)):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return to_jsonable(config)


class WandbTracker(_TrackerBase):
    """Weights & Biases backend that can never stop training.

    * ``wandb.init(reinit="create_new")``: every tracker gets its own run object, and all calls go
      through that object (never the global ``wandb.log``), so successive Hydra multirun jobs in one
      process never share a run.
    * Any exception from wandb (including ``import wandb``) warns once and disables the tracker.
    * Quiet by default (``silent``, console capture off, system-stats sampler off) with a short
      ``init_timeout`` for online mode.
    """

    def __init__(
        self,
        project: str = "archcmp",
        entity: str | None = None,
        *,
        mode: str = "offline",  # "online" | "offline" | "disabled"
        name: str | None = None,  # e.g. f"{experiment}-{arch}-{size}-s{seed}"
        group: str | None = None,  # experiment / sweep name
        tags: list[str] | tuple[str, ...] | None = None,  # e.g. [arch, size]
        config: Any = None,  # dict or OmegaConf (resolved)
        dir: str | Path | None = None,  # noqa: A002 - mirrors wandb.init; the run_dir
        job_type: str | None = None,
        run_id: str | None = None,  # with resume="allow", continue a previous wandb run
        resume: str | None = None,
        init_timeout: float = 30.0,
        console: str = "off",
        system_stats: bool = False,
        reinit: str = "create_new",
    ):
        self.run = None
        self._warned = False
        self._last_step = 0
        self.run_id: str | None = None  # kept after finish
        self.run_dir: Path | None = None  # wandb's own dir: .../wandb/offline-run-* or run-*
        try:
            import wandb

            self._wandb = wandb
            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            wanted = {
                "silent": True,
                "quiet": True,
                "show_info": False,
                "console": console,
                "init_timeout": float(init_timeout),
                "x_disable_stats": not system_stats,
                "x_disable_machine_info": not system_stats,
            }
            fields = getattr(wandb.Settings, "model_fields", {})  # drop settings this version lacks
            settings = wandb.Settings(**{k: v for k, v in wanted.items() if k in fields})
            self.run = wandb.init(
                project=project, entity=entity, mode=mode, name=name, group=group,
                tags=[str(t) for t in tags] if tags else None, config=_plain_config(config),
                dir=str(dir) if dir is not None else None, job_type=job_type,
                id=run_id, resume=resume, reinit=reinit, settings=settings,
            )
            self.run_id = self.run.id
            self.run_dir = Path(self.run.dir).parent  # run.dir is <run>/files
        except Exception as e:  # noqa: BLE001 - wandb must never stop training
            self._fail("init", e)

    # -- helpers
    @property
    def active(self) -> bool:
        return self.run is not None

    def _fail(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            msg = f"wandb {what} failed ({type(exc).__name__}: {exc}); continuing without wandb"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
        run, self.run = self.run, None
        if run is not None and what != "finish":
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self._fail(what, e)

    # -- Tracker API
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run is None:
            return
        data = {str(k): to_jsonable(v) for k, v in metrics.items() if k != "step"}
        self._last_step = max(self._last_step, int(step))
        self._call("log", self.run.log, data, step=int(step))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        if self.run is not None:
            self._call("log_summary", self.run.summary.update, to_jsonable(dict(summary)))

    def _media(self, path: Path) -> Any:
        wandb = self._wandb
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return wandb.Image(str(path))
        if suffix in TABLE_SUFFIXES:
            import pandas as pd

            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
            return wandb.Table(dataframe=df)
        return None

    def log_files(self, paths: Mapping[str, Path]) -> None:
        """Images become ``wandb.Image``, csv/tsv become ``wandb.Table`` (logged at the last step);
        anything else is saved into the run's files."""

        def _do():
            media = {}
            for key, p in paths.items():
                p = Path(p)
                obj = self._media(p)
                if obj is None:
                    self.run.save(str(p), base_path=str(p.parent), policy="now")
                else:
                    media[str(key)] = obj
            if media:
                self.run.log(media, step=self._last_step)

        self._call("log_files", _do)

    def finish(self, status: str = "complete") -> None:
        if self.run is None:
            return
        run = self.run

        def _do():
            run.summary["status"] = status
            run.finish(exit_code=0 if status == "complete" else 1)

        self._call("finish", _do)
        self.run = None


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
    ``wandb_kwargs`` go to :class:`WandbTracker` (``dir`` defaults to ``run_dir``).
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
        wandb_kwargs.setdefault("dir", run_dir)
        trackers.append(WandbTracker(**wandb_kwargs))
    if not trackers:
        return NullTracker()
    if len(trackers) == 1:
        return trackers[0]
    return MultiTracker(*trackers)
