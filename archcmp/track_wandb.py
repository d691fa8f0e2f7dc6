"""The Weights & Biases backend of the tracker interface in :mod:`archcmp.track`.

:class:`WandbTracker` logs metrics, the summary and files to a wandb run, ``mode="offline"`` by
default. Any wandb failure (import, init, network, logging) warns once and turns the tracker into
a no-op: tracking must never stop training. :func:`archcmp.track.make_tracker` builds it for
``logger.kind=wandb``; the analysis commands build their own.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

from archcmp.track import _TrackerBase, to_jsonable

log = logging.getLogger(__name__)

# Files that log_files turns into wandb media rather than saving as plain run files.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}
TABLE_SUFFIXES = {".csv", ".tsv"}


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
