"""The models one ``archcmp-train`` command trains, and their run directories.

A :class:`RunGroup` is the run itself (``train.num_seeds=1``: one member in ``run_dir``) or k
members seed..seed+k-1 trained together (``run_dir/<member run_name>/``, see
:mod:`archcmp.training.ensemble`). What differs between one member and k lives here and in the
engines, so the training loop reads the same for every k.

Before anything is written, every directory is locked (one writer) and its recorded identity
compared with the command's settings (:mod:`archcmp.training.identity`): a mismatch raises
:class:`~archcmp.training.identity.RunRefused` and leaves the directory untouched. In a
multi-process run only process 0 (the *primary*) claims, reads and writes the records.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from archcmp.model.config import ConfigError
from archcmp.training import identity
from archcmp.training.command import RunCommand
from archcmp.training.records import GROUP_FILE, write_group_record, write_hydra_record, write_resolved_config
from archcmp.training.settings import RunSettings, TrainSettings


@dataclass(frozen=True)
class RunGroup:
    command: RunSettings          # the command's own settings (k > 1: the group's seed and run_name)
    run_dir: Path                 # the command's directory (k > 1: the group's, holding ensemble.json)
    settings: list[RunSettings]   # one per member (its own seed and run_name)
    configs: list[dict]           # each member's config as plain resolved values (config.yaml, tracker)
    dirs: list[Path]              # each member's run directory
    resolved: list[dict]          # what each member's identity is made of (fine-tuning: with its source)
    primary: bool                 # this process writes the records
    sources: list[dict] | None = None  # fine-tuning: each member's starting checkpoint (finetune.source_record)
    hydra_record: Mapping[str, str] | None = None  # the command line's ``.hydra/`` files

    @property
    def k(self) -> int:
        return len(self.settings)

    @classmethod
    def of(cls, command: RunCommand, run_dir: Path, primary: bool) -> "RunGroup":
        s, settings = command.settings, list(command.members)
        dirs = [run_dir] if len(settings) == 1 else [run_dir / m.run_name for m in settings]
        group = cls(s, run_dir, settings, list(command.configs), dirs, list(command.configs), primary,
                    hydra_record=command.hydra_record)
        if s.finetune is None:
            return group
        from archcmp.training import finetune  # the identity holds the source run's identity and step

        sources = [finetune.source_record(finetune.source_dir(s.finetune.source, m.seed), s.finetune.step)
                   for m in settings]
        return dataclasses.replace(group, sources=sources,
                                   resolved=[finetune.with_source(r, rec) for r, rec in zip(group.resolved, sources)])

    def with_train(self, ts: TrainSettings) -> "RunGroup":
        """Every member with the train settings ``ts`` (``train.batch_size=full`` filled in)."""
        return dataclasses.replace(self, command=dataclasses.replace(self.command, train=ts),
                                   settings=[dataclasses.replace(m, train=ts) for m in self.settings])

    # ---- the directories -------------------------------------------------------------------------
    @contextlib.contextmanager
    def claimed(self, overwrite: bool) -> Iterator[list[dict]]:
        """Lock every directory (the group's too) and check its identity; yields the members'
        identities, to be written once the run is validated (:meth:`write_records`)."""
        locks = []
        try:
            for d in dict.fromkeys([self.run_dir, *self.dirs]) if self.primary else ():
                locks.append(identity.RunLock(d).acquire())
            idents = [self._claim(d, r, overwrite) for d, r in zip(self.dirs, self.resolved)]
            if self.primary and overwrite and self.k > 1:
                (self.run_dir / GROUP_FILE).unlink(missing_ok=True)
            yield idents
        finally:
            for lock in reversed(locks):
                lock.release()

    def _claim(self, d: Path, resolved_cfg: dict, overwrite: bool) -> dict:
        if not self.primary:  # the other processes neither read nor write the records
            return identity.identity_of(resolved_cfg)
        if overwrite:
            aside = identity.move_aside(d)
            if aside is not None:
                print(f"archcmp-train: train.overwrite=true: moved the earlier run {d} to {aside}", file=sys.stderr)
        return identity.check(d, resolved_cfg)

    def previous(self) -> list[dict]:
        """The members' summaries as an earlier attempt left them (empty: none)."""
        from archcmp.tracking.tracker import read_summary

        return [read_summary(d) for d in self.dirs]

    def write_records(self, idents: list[dict]) -> None:
        """Identity and resolved config in every member's directory (and ``ensemble.json``, k > 1):
        from now on the directories belong to these settings."""
        if not self.primary:
            return
        for d, config, ident in zip(self.dirs, self.configs, idents):
            identity.write(d, ident)
            write_resolved_config(d, config)
        if self.k > 1:
            write_group_record(self.run_dir, self.command, [d.name for d in self.dirs], self.configs)

    def accept(self, on_accept: Callable[[Path], Any] | None = None) -> None:
        """The run is validated and its directories claimed: the command line's ``.hydra/`` record goes
        into the command's directory, and ``on_accept(run_dir)`` is told (primary process only)."""
        if not self.primary:
            return
        if self.hydra_record is not None:
            write_hydra_record(self.run_dir, self.hydra_record)
        if on_accept is not None:
            on_accept(self.run_dir)

    # ---- what k changes --------------------------------------------------------------------------
    def keep_checkpoints(self, keep: int) -> int:
        """k > 1 keeps two checkpoints at least, so a kill between the members' saves leaves a common step."""
        return keep if self.k == 1 else max(keep, 2)

    def restore_step(self, resume_at: int | None) -> int | None:
        """The step each member restores: its newest readable one (k = 1) or the common one (k > 1)."""
        return None if self.k == 1 else resume_at

    def ensemble_fields(self, i: int) -> dict | None:
        """``summary.json["ensemble"]`` of member i (None for a lone run)."""
        if self.k == 1:
            return None
        return {"num_seeds": self.k, "member": i, "seeds": [m.seed for m in self.settings],
                "group_dir": str(self.run_dir)}

    def label(self, i: int) -> str:
        """How an error message names member i ("" for a lone run)."""
        return "" if self.k == 1 else f", member {self.settings[i].run_name}"

    def result(self, summaries: list[dict]) -> dict:
        """What :func:`archcmp.training.trainer.train` returns: the run's summary (k = 1) or the group's."""
        if self.k == 1:
            return summaries[0]
        order = ("failed", "interrupted", "running", "complete")
        status = min((m.get("status", "running") for m in summaries), key=order.index)
        return {"run_name": self.command.run_name, "num_seeds": len(summaries),
                "seeds": [m.get("seed") for m in summaries], "status": status,
                "skipped": all(m.get("skipped") for m in summaries), "members": summaries}


def check_placement(k: int, place: Any) -> None:
    """The k members share one device: a mesh (several devices or processes) is not supported."""
    if k == 1 or place.trivial:
        return
    import jax

    raise ConfigError(f"train.num_seeds={k}: the members are trained together on one device, but JAX sees "
                      f"{len(jax.devices())} devices in {jax.process_count()} process(es); use train.num_seeds=1 "
                      "on a mesh (or a sweep over seed=), or expose a single device")
