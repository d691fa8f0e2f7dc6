"""The tracker interface and the run-record file helpers every backend shares.

:class:`Tracker` is the interface, :class:`TrackerBase` gives ``with tracker: ...`` support;
:func:`to_jsonable`, :func:`atomic_write_json` and :func:`read_jsonl` read and write the JSON
records. The backends live in :mod:`archcmp.tracking.tracker` (JSONL, null, multi) and
:mod:`archcmp.tracking.wandb_tracker`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


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


class TrackerBase:
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


def atomic_write_json(path: Path, obj: Any) -> None:
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
