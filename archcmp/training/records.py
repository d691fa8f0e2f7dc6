"""A run directory's records besides the identity (:mod:`archcmp.training.identity`): the
resolved ``config.yaml``; the command line's ``.hydra/``; a ``train.num_seeds=k`` group's
``ensemble.json`` (the group directory holds only that, no ``summary.json``, so analysis sees k
ordinary runs); and the failure record of a run that stopped before it could write its own summary."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

GROUP_FILE = "ensemble.json"


def plain(cfg: Any) -> Any:
    """An OmegaConf config as plain containers with every interpolation filled in (else as it is)."""
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True) if hasattr(cfg, "_get_node") else cfg
    except Exception:  # noqa: BLE001 - a config that cannot be resolved is logged as-is
        return cfg


def resolved(cfg: Any) -> dict:
    """The config as plain values, every interpolation filled in, without Hydra's own node."""
    return {k: v for k, v in dict(plain(cfg)).items() if k != "hydra"}


def write_resolved_config(run_dir: Path, cfg: Any) -> None:
    """``run_dir/config.yaml``: the run's config with every interpolation filled in (Hydra's own
    ``.hydra/config.yaml`` keeps them, e.g. ``run_name: ${arch.name}-...``)."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    OmegaConf.save(OmegaConf.create(resolved(cfg)), tmp)
    os.replace(tmp, run_dir / "config.yaml")


def write_hydra_record(run_dir: Path, files: Mapping[str, str]) -> None:
    """``run_dir/.hydra/``: the command line's own record (``config.yaml`` with its interpolations,
    ``hydra.yaml``, ``overrides.yaml``), as the command line rendered it; written only once this
    process has claimed the directory."""
    out = Path(run_dir) / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")


def record_failure(run_dir: str | Path, err: BaseException) -> None:
    """Make sure a failed run leaves a summary saying so (train() writes one once it started): in the
    run's directory, or in each member's of a ``train.num_seeds=k`` group. Only process 0 records,
    and only in a directory no other process is writing."""
    from archcmp.distributed.hosts import is_primary
    from archcmp.tracking.tracker import JsonlTracker
    from archcmp.training.identity import RunLock, RunRefused
    from archcmp.training.summary import error_fields

    if not is_primary():  # multi-process: process 0 records it
        return
    try:  # a directory another process is writing is not ours to record in
        lock = RunLock(Path(run_dir)).acquire()
    except RunRefused:
        return
    try:
        for d in member_dirs(run_dir):
            tracker = JsonlTracker(d, record_status=False)
            summary = tracker.read_summary()
            if summary.get("status") in (None, "running"):
                tracker.log_summary({**summary, "status": "failed", **error_fields(err), "run_name": d.name})
    finally:
        lock.release()


def write_group_record(run_dir: Path, s: Any, names: list[str], member_cfgs: list[dict]) -> None:
    """``ensemble.json`` in the group directory and ``.hydra/config.yaml`` in every member's.

    A ``summary.json`` an earlier failed attempt left in the group directory (e.g. a config error
    recorded by the command line) is removed: the members hold the run records now.
    """
    from omegaconf import OmegaConf

    from archcmp.tracking.tracker import atomic_write_json, read_summary

    stale = run_dir / "summary.json"
    if stale.exists() and read_summary(run_dir).get("status") != "complete":
        stale.unlink()
    atomic_write_json(run_dir / GROUP_FILE, {
        "num_seeds": s.train.num_seeds, "seeds": [s.seed + i for i in range(s.train.num_seeds)], "members": names,
        "run_name": s.run_name})
    for name, c in zip(names, member_cfgs):
        (run_dir / name / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(c), run_dir / name / ".hydra" / "config.yaml")


def member_dirs(run_dir: str | Path) -> list[Path]:
    """The run directories of the command's ``run_dir``: itself, or a group's members."""
    run_dir = Path(run_dir)
    if not (run_dir / GROUP_FILE).exists():
        return [run_dir]
    return [run_dir / name for name in json.loads((run_dir / GROUP_FILE).read_text())["members"]]
