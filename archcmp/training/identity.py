"""What a run *is*, and who may write it.

* **Identity.** A run directory belongs to one set of result-relevant settings: the resolved config
  minus what cannot change the numbers (logger, launcher, Hydra, paths, progress bar, resume/skip/
  overwrite switches, logging and checkpoint cadence, multi-process addresses). Its hash and the
  settings themselves are stored in ``identity.json`` at the first launch; every relaunch
  recomputes them, and skip or resume happen only when they match. A mismatch stops with one line
  naming the keys that differ (``old -> new``) and the two ways out: another ``run_name=`` /
  ``experiment_name=``, or ``train.overwrite=true``, which moves the old records aside into
  ``<dir>.old-<timestamp>/`` (nothing is ever deleted).

  Directories made before identities existed have no ``identity.json``: their resolved
  ``config.yaml`` stands in for it, compared on the keys both configs have (a key added to the
  framework since then cannot be judged and is not held against the old run).

* **One writer.** :class:`RunLock` takes an exclusive ``flock`` on ``<dir>/.lock`` before anything
  else is written there and records the holder (pid, host, start time) in it. A second process stops
  with one line naming the holder. The kernel drops the lock with the process, so a run killed with
  SIGKILL never blocks its relaunch (the stale holder line is simply overwritten).
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Mapping

IDENTITY_FILE = "identity.json"
LOCK_FILE = ".lock"
ASIDE_MARK = ".old-"  # <run dir>.old-<UTC timestamp>: a run moved aside by train.overwrite=true

# Top-level keys that cannot change a run's numbers.
IGNORED_TOP = ("hydra", "logger", "experiment_name", "run_name", "distributed", "experiment")
# train.* keys that only change bookkeeping (resume is bit-exact, so checkpoint cadence is free).
IGNORED_TRAIN = ("progress", "resume", "skip_complete", "overwrite", "log_every", "checkpoint_every",
                 "keep_checkpoints")
# Settings added after runs had been made, left out of the identity at the value those runs had
# (so an older run directory keeps matching): (group, key) -> that value.
NEUTRAL_DEFAULTS = {("arch", "mlm_replacement"): "bert", ("arch", "mlm_rate"): 0.15}
# Files whose presence means the directory already holds (part of) a run.
RECORDS = ("identity.json", "summary.json", "metrics.jsonl", "config.yaml", "checkpoints", "ensemble.json")


class RunRefused(Exception):
    """This run directory may not be written by this process (other settings, or another writer).

    Raised before anything is written to the directory, so nothing in it is touched."""


def identity_of(resolved: Mapping[str, Any]) -> dict:
    """The result-relevant part of a resolved (plain) config."""
    out = {k: v for k, v in resolved.items() if k not in IGNORED_TOP}
    if isinstance(out.get("train"), Mapping):
        out["train"] = {k: v for k, v in out["train"].items() if k not in IGNORED_TRAIN}
        # no early-stop rule (train.early_stop.metric unset) is how every run trained before the rule existed
        if not (out["train"].get("early_stop") or {}).get("metric"):
            out["train"].pop("early_stop", None)
    if isinstance(out.get("model"), Mapping):  # an unset (null) model field is the arch/size default
        out["model"] = {k: v for k, v in out["model"].items() if v is not None}
    for (group, key), value in NEUTRAL_DEFAULTS.items():
        if isinstance(out.get(group), Mapping) and out[group].get(key) == value:
            out[group] = {k: v for k, v in out[group].items() if k != key}
    # A run that fine-tunes nothing (finetune.from unset) is the plain training run it always was; a
    # fine-tuned run's finetune group also carries its source's identity (archcmp.training.finetune).
    ft = out.get("finetune")
    if isinstance(ft, Mapping) and ft.get("from") is None and ft.get("source") is None:
        out.pop("finetune")
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def digest(ident: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *, common_only: bool = False) -> list[str]:
    """``key: old -> new`` for every leaf that differs (``common_only``: leaves both sides have)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(set(a) & set(b)) if common_only else sorted(set(a) | set(b))
    missing = "<unset>"
    return [f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}" for k in keys if a.get(k, missing) != b.get(k, missing)]


def holds_records(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RECORDS)


def holds_results(run_dir: Path) -> bool:
    """Whether anything in ``run_dir`` came out of training: a checkpoint, a metrics row or a
    complete summary. A directory without (e.g. a run that stopped on a config error) is free."""
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        return True
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        return True
    summary = run_dir / "summary.json"
    try:
        return summary.exists() and json.loads(summary.read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return True  # cannot tell: treat it as a result


def recorded_identity(run_dir: Path) -> tuple[dict | None, bool]:
    """(identity the directory was made with, whether it is exact) -- ``(None, True)`` for a new one.

    An exact identity comes from ``identity.json``; a directory from before identities existed is
    judged by its resolved ``config.yaml`` (not exact: compared on common keys only)."""
    path = run_dir / IDENTITY_FILE
    if path.exists():
        return json.loads(path.read_text())["settings"], True
    legacy = run_dir / "config.yaml"
    if legacy.exists():
        import yaml

        return identity_of(yaml.safe_load(legacy.read_text()) or {}), False
    return None, True


def check(run_dir: Path, resolved: Mapping[str, Any]) -> dict:
    """Refuse (:class:`RunRefused`) when ``run_dir`` holds results made with other result-relevant
    settings; returns this config's identity (to :func:`write` once the run has been validated)."""
    new = identity_of(resolved)
    if not holds_results(run_dir):
        return new
    old, exact = recorded_identity(run_dir)
    if old is None:  # results without any config: cannot tell what made them
        raise RunRefused(f"{run_dir}: holds results but no identity.json or config.yaml to compare with; choose "
                         "another run_name= or experiment_name=, or train.overwrite=true to move them aside")
    diff = differences(old, new, common_only=not exact)
    if diff:
        raise RunRefused(f"{run_dir} holds a run made with other settings ({'; '.join(diff)}); choose another "
                         "run_name= or experiment_name=, or train.overwrite=true to move the old run aside "
                         "(kept, not deleted)")
    return new


def write(run_dir: Path, ident: Mapping[str, Any]) -> None:
    """``identity.json``: this run's settings, written once they have been validated (a directory
    that holds results keeps the identity it was made with, which :func:`check` found equal)."""
    from archcmp.tracking.tracker import atomic_write_json

    path = run_dir / IDENTITY_FILE
    if not (path.exists() and holds_results(run_dir)):
        atomic_write_json(path, {"hash": digest(ident), "settings": dict(ident)})


def move_aside(run_dir: Path) -> Path | None:
    """``train.overwrite=true``: move the directory's contents (all but its lock) to a sibling
    ``<dir>.old-<UTC timestamp>/``; returns it (None when there was nothing to move)."""
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.is_dir() else []
    if not entries or not (holds_records(run_dir) or holds_results(run_dir)):
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = run_dir.with_name(f"{run_dir.name}{ASIDE_MARK}{stamp}")
    aside.mkdir(parents=True)
    for p in entries:
        os.replace(p, aside / p.name)
    return aside


class RunLock:
    """Exclusive writer lock on ``<run_dir>/.lock`` (``fcntl.flock``: released by the kernel when
    the holder dies, so a SIGKILLed run leaves no lock behind)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunRefused(f"{self.path.parent} is being written by {holder}; wait for it to finish, or "
                             "choose another run_name= / experiment_name=") from None
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {now})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
