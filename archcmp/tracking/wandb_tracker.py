"""The Weights & Biases backend of the tracker interface in :mod:`archcmp.tracking.tracker`.

:class:`WandbTracker` logs metrics, the summary and files to a wandb run, ``mode="offline"`` by
default. Any wandb failure (import, init, network, logging) warns once and turns the tracker into
a no-op: tracking must never stop training. :func:`archcmp.tracking.tracker.make_tracker` builds it for
``logger.kind=wandb``; the analysis commands build their own (:mod:`archcmp.analysis.common.wandb_log`).

Resuming. A training run keeps one wandb run id for its whole life (:func:`stable_run_id`, stored
in ``<run dir>/wandb.json``) and opens it with ``resume="allow"``, so a relaunch continues the same
wandb run. Offline, every process writes its own ``wandb/offline-run-<time>-<id>/run-<id>.wandb``
(``wandb sync`` joins them by id), and wandb-core buffers: a process killed with SIGKILL may leave
none of its steps in its file. :meth:`WandbTracker.resume_from` therefore reads what the earlier
files of this id hold (or, online, where the server's history ends), re-logs the missing steps
from ``metrics.jsonl`` (the run's flushed-per-line record) and drops later logs of steps wandb
already has (a resumed run replays the steps after its last checkpoint bit-exactly). Every step
thus reaches wandb exactly once per run id.

``WANDB_MODE`` in the environment wins over ``logger.mode`` / ``--wandb-mode``; when they
disagree one warning line says so (:func:`resolve_mode`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import struct
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from archcmp.tracking.tracker import _TrackerBase, atomic_write_json, to_jsonable

log = logging.getLogger(__name__)

# Files that log_files turns into wandb media rather than saving as plain run files.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}
TABLE_SUFFIXES = {".csv", ".tsv"}


MODES = ("online", "offline", "disabled")
ID_FILE = "wandb.json"
_told: set[tuple[str, str]] = set()


def resolve_mode(configured: str) -> str:
    """The wandb mode to use: the environment's ``WANDB_MODE`` when set (one warning line when it
    differs from the configured one), else ``configured``."""
    env = os.environ.get("WANDB_MODE")
    if not env or env == configured:
        return configured
    if env not in MODES:
        if ("bad", env) not in _told:
            _told.add(("bad", env))
            print(f"archcmp: warning: WANDB_MODE={env!r} is not one of {list(MODES)}; using mode={configured}",
                  file=sys.stderr)
        return configured
    if (env, configured) not in _told:
        _told.add((env, configured))
        print(f"archcmp: warning: WANDB_MODE={env} in the environment wins over the configured wandb mode "
              f"{configured!r}", file=sys.stderr)
    return env


def stable_run_id(run_dir: str | Path, *, renew: bool = False) -> str:
    """The wandb run id of a run directory, made at its first launch and kept in ``wandb.json``
    (``renew``: a fresh id, for a run trained again from step 0 with ``train.resume=false``)."""
    path = Path(run_dir) / ID_FILE
    if path.exists() and not renew:
        return str(json.loads(path.read_text())["id"])
    run_id = secrets.token_hex(6)  # 12 of [0-9a-f]: valid in wandb run ids and paths
    atomic_write_json(path, {"id": run_id})
    return run_id


def offline_records(path: Path):
    """The protobuf records of an offline ``.wandb`` file, in order (an incomplete tail is ignored).

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each chunk
    ``crc32c:u32 length:u16 kind:u8`` + payload, where kind 1 is a whole record and 2/3/4 the
    first/middle/last piece of one split across blocks."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 1 << 15
    pos, parts = 7, []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block tail too short for a chunk header: padding
            pos += room
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if (kind, length) == (0, 0):  # zero padding up to the next block
            pos += room
            continue
        end = pos + 7 + length
        if end > len(data):  # still being written
            return
        chunk, pos = data[pos + 7:end], end
        parts = [chunk] if kind in (1, 2) else parts + [chunk]
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def offline_last_step(root: Path, run_id: str, skip: Path | None = None) -> int:
    """The highest history step any offline file of ``run_id`` under ``root`` holds (0: none)."""
    last = 0
    for path in Path(root).glob(f"wandb/*-{run_id}/run-{run_id}.wandb"):
        if skip is not None and path.parent.resolve() == skip.resolve():
            continue
        for record in offline_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            for item in record.history.item:
                if (item.key or ".".join(item.nested_key)) == "_step":
                    last = max(last, int(json.loads(item.value_json)))
    return last


def _plain_config(config: Any) -> Any:
    """The run config as plain JSON values for ``wandb.init`` (OmegaConf, dataclass or dict)."""
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

    _floor = 0  # steps <= this are in the wandb run already (see resume_from)

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
        self._dir = None if dir is None else Path(dir)
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
                project=project, entity=entity, mode=resolve_mode(mode), name=name, group=group,
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

    def resume_from(self, rows: list[Mapping[str, Any]], resume_step: int) -> None:
        """Continue a run after a relaunch: log the rows of ``metrics.jsonl`` up to ``resume_step``
        that the wandb run does not hold yet, and drop future logs of steps it does hold."""
        if self.run is None:
            return
        have = 0
        if getattr(self.run, "resumed", False):  # online: the server's history ends before starting_step
            have = max(have, int(getattr(self.run, "starting_step", 0) or 0) - 1)
        if self._dir is not None:
            try:
                have = max(have, offline_last_step(self._dir, self.run_id, skip=self.run_dir))
            except Exception as e:  # noqa: BLE001 - unreadable earlier file: re-log everything
                log.warning("reading earlier offline wandb files failed (%s)", e)
        for row in rows:
            step = int(row.get("step", 0))
            if have < step <= resume_step:
                self.log(row, step)
        self._floor = have

    # -- Tracker API
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run is None or int(step) <= self._floor:
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
