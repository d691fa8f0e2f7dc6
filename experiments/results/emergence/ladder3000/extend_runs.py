"""Lengthen finished constant-lr runs to a larger step budget without retraining the shared prefix.

With ``optimizer.min_lr_ratio=1.0`` the learning rate after the warm-up is the constant peak value
whatever ``train.steps`` is, and the training stream depends only on (task, split, seed), so the
first S steps of an N-step run (N > S) are the same computation as an S-step run. This script copies
a sweep directory and changes only what names the budget -- ``train.steps`` in each member's
``identity.json`` (hash recomputed), ``config.yaml`` and ``.hydra/config.yaml`` -- and marks each
member's summary ``interrupted`` with an ``extended_from`` record; relaunching the training command
with ``train.steps=N`` then resumes every member from its step-S checkpoint. It refuses any run whose
learning rate is not constant. ``extended.json`` in the destination lists what was copied.

    python extend_runs.py SRC_SWEEP DST_SWEEP --from-steps 1500 --to-steps 3000
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import sys
from pathlib import Path

import yaml


def _digest(ident: dict) -> str:  # the same hash as archcmp.training.identity.digest
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _set_steps_yaml(path: Path, old: int, new: int) -> None:
    if not path.exists():
        return
    cfg = yaml.safe_load(path.read_text())
    if cfg["train"]["steps"] != old:
        sys.exit(f"{path}: train.steps={cfg['train']['steps']}, expected {old}")
    cfg["train"]["steps"] = new
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def extend_member(d: Path, old: int, new: int, src: Path) -> None:
    ident_path = d / "identity.json"
    rec = json.loads(ident_path.read_text())
    st = rec["settings"]
    if st["optimizer"].get("min_lr_ratio") != 1.0:
        sys.exit(f"{d}: optimizer.min_lr_ratio={st['optimizer'].get('min_lr_ratio')!r}; only a constant lr "
                 "makes the longer run's first steps equal to this run")
    if st["train"]["steps"] != old:
        sys.exit(f"{d}: train.steps={st['train']['steps']}, expected {old}")
    if not (d / "checkpoints" / str(old)).is_dir():
        sys.exit(f"{d}: no checkpoint at step {old}")
    st["train"]["steps"] = new
    ident_path.write_text(json.dumps({"hash": _digest(st), "settings": st}, indent=1, sort_keys=True))
    _set_steps_yaml(d / "config.yaml", old, new)
    _set_steps_yaml(d / ".hydra" / "config.yaml", old, new)
    summ = json.loads((d / "summary.json").read_text())
    if summ.get("status") != "complete" or summ.get("step") != old:
        sys.exit(f"{d}: summary status {summ.get('status')!r} at step {summ.get('step')}, expected complete at {old}")
    summ["status"] = "interrupted"
    summ["extended_from"] = {"source": str(src), "from_steps": old, "to_steps": new}
    (d / "summary.json").write_text(json.dumps(summ, indent=2, sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--from-steps", type=int, required=True)
    ap.add_argument("--to-steps", type=int, required=True)
    a = ap.parse_args()
    if a.to_steps <= a.from_steps:
        sys.exit("--to-steps must exceed --from-steps")
    if a.dst.exists():
        sys.exit(f"{a.dst} exists; choose a new destination")
    shutil.copytree(a.src, a.dst, ignore=shutil.ignore_patterns(".lock"))
    members = sorted(p.parent for p in a.dst.rglob("identity.json"))
    for d in members:
        extend_member(d, a.from_steps, a.to_steps, a.src / d.relative_to(a.dst))
    (a.dst / "extended.json").write_text(json.dumps({
        "source": str(a.src), "from_steps": a.from_steps, "to_steps": a.to_steps,
        "members": [str(d.relative_to(a.dst)) for d in members],
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, indent=1))
    print(f"extended {len(members)} runs: {a.dst}")


if __name__ == "__main__":
    main()
