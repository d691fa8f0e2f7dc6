"""Load training runs (one row per run) from sweep directories or a wandb project.

A *run directory* is any directory holding a ``summary.json`` (written by the trainer); sweep
directories are walked recursively, so ``multirun/2025-01-01/12-00-00/3/`` style Hydra layouts
and hand-made ``sweep/<arch>/<size>/`` trees both work. ``metrics.jsonl`` next to it (one JSON
object per logged step) is read only on demand (:func:`load_metrics`) or when the summary has
no ``eval_loss`` (then the last logged ``eval_loss`` is used and ``eval_loss_source`` says so).

Data-fingerprint check: every architecture is meant to see the identical example stream, and
the stream is determined by the data seed and the token budget. So the *peers* of a run are all
runs (any architecture, size or status) with the same ``(seed, train_tokens)``; within such a
group the most common ``data_fingerprint`` is taken as the reference and every run that
disagrees with it is flagged (``fingerprint_ok == False``) and reported with
``warnings.warn``. When there is no strict majority (e.g. 1 vs 1) all runs in the group are
flagged, since we cannot tell which is right. Runs without a fingerprint are not judged.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "arch", "size", "params_total", "params_nonembedding", "flops_per_token", "train_tokens",
    "train_flops", "eval_loss", "best_eval_loss", "eval_metrics", "data_fingerprint",
    "tokens_per_sec", "wall_seconds", "status", "seed", "steps", "experiment",
)
WANDB_PREFIX = "wandb:"


class FingerprintWarning(UserWarning):
    """A run's data fingerprint disagrees with its (seed, train_tokens) peers."""


def load_runs(paths, *, check_fingerprints: bool = True) -> pd.DataFrame:
    """One row per run found under ``paths`` (directories, walked recursively, or
    ``"wandb:entity/project"``). Columns: the summary.json keys (missing ones are NaN),
    ``eval_metrics`` flattened to ``eval_metrics.<name>``, plus ``run_dir``, ``run_name``,
    ``eval_loss_source`` and ``fingerprint_ok``. Returns an empty frame (with the summary
    columns) when nothing is found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows: list[dict] = []
    for p in paths:
        p = str(p)
        if p.startswith(WANDB_PREFIX):
            rows.extend(_wandb_rows(p[len(WANDB_PREFIX):]))
        else:
            rows.extend(_dir_rows(Path(p)))
    df = pd.DataFrame(rows)
    for k in SUMMARY_KEYS + ("run_dir", "run_name", "eval_loss_source"):
        if k not in df.columns:
            df[k] = pd.Series(dtype=object)
    df = _flatten_metrics(df)
    df["fingerprint_ok"] = check_fingerprint_groups(df) if check_fingerprints and len(df) else True
    return df.reset_index(drop=True)


def is_set_aside(name: str) -> bool:
    from archcmp.training.identity import ASIDE_MARK

    return ASIDE_MARK in name


def find_run_dirs(root: Path) -> list[Path]:
    """Directories under (and including) ``root`` that contain ``summary.json``, sorted."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such sweep directory: {root}")
    if root.is_file():
        root = root.parent
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # runs moved aside by train.overwrite=true (<run>.old-<timestamp>) are not part of the sweep
        dirnames[:] = sorted(d for d in dirnames if d not in ("checkpoints", ".hydra", "analysis", "launches")
                             and not is_set_aside(d))
        if "summary.json" in filenames:
            found.append(Path(dirpath))
    return sorted(found)


def load_metrics(run_dir) -> pd.DataFrame:
    """``metrics.jsonl`` of one run as a frame (one row per logged step); empty if absent.
    Malformed lines (e.g. a half-written last line of a running job) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    recs = []
    if path.exists():
        with open(path) as fh:
            for ln in fh:
                ln = ln.strip()
                if not ln:
                    continue
                try:
                    recs.append(json.loads(ln))
                except json.JSONDecodeError:
                    log.debug("skipping malformed line in %s", path)
    return pd.DataFrame(recs)


def _dir_rows(root: Path) -> list[dict]:
    rows = []
    for rd in find_run_dirs(root):
        try:
            with open(rd / "summary.json") as fh:
                s = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            warnings.warn(f"skipping {rd}: unreadable summary.json ({exc})", stacklevel=3)
            continue
        if not isinstance(s, dict):
            warnings.warn(f"skipping {rd}: summary.json is not an object", stacklevel=3)
            continue
        row = dict(s)
        row["run_dir"] = str(rd)
        row["run_name"] = str(rd.relative_to(root)) if rd != root else rd.name
        row["eval_loss_source"] = "summary"
        if _missing(row.get("eval_loss")):
            m = load_metrics(rd)
            if "eval_loss" in m.columns and m["eval_loss"].notna().any():
                row["eval_loss"] = float(m["eval_loss"].dropna().iloc[-1])
                row["eval_loss_source"] = "metrics.jsonl"
            else:
                row["eval_loss_source"] = None
        rows.append(row)
    return rows


def _wandb_rows(project_path: str) -> list[dict]:
    """Runs of ``entity/project`` through the wandb public API (online only)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        raise RuntimeError(
            f"cannot load wandb:{project_path}: WANDB_MODE={os.environ['WANDB_MODE']} (offline). "
            "The public API needs network access; point at the local sweep directory instead.")
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - wandb is a dependency
        raise RuntimeError("loading wandb: paths needs the `wandb` package") from exc
    try:
        api = wandb.Api(timeout=30)
        runs = list(api.runs(project_path))
    except Exception as exc:  # network, auth or unknown-project errors
        raise RuntimeError(f"could not query wandb project {project_path!r} (offline or not "
                           f"logged in?): {exc}") from exc
    rows = []
    for r in runs:
        summ = {k: v for k, v in dict(r.summary).items() if not k.startswith("_")}
        row = {k: summ.get(k, r.config.get(k)) for k in SUMMARY_KEYS}
        if not isinstance(row.get("eval_metrics"), dict):
            row["eval_metrics"] = {k[len("eval/"):]: v for k, v in summ.items() if k.startswith("eval/")}
        if _missing(row.get("status")):
            row["status"] = {"finished": "complete", "running": "running"}.get(r.state, "failed")
        row.update(run_dir=f"wandb:{project_path}/{r.id}", run_name=r.name, eval_loss_source="wandb")
        rows.append(row)
    return rows


def _flatten_metrics(df: pd.DataFrame) -> pd.DataFrame:
    if "eval_metrics" not in df.columns or not len(df):
        return df
    flat = [m if isinstance(m, dict) else {} for m in df["eval_metrics"]]
    extra = pd.DataFrame(flat, index=df.index).add_prefix("eval_metrics.")
    return pd.concat([df, extra], axis=1) if len(extra.columns) else df


def check_fingerprint_groups(df: pd.DataFrame) -> pd.Series:
    """Boolean Series: False for runs whose fingerprint disagrees with their peers (see the
    module docstring for the definition); emits one :class:`FingerprintWarning` per bad group."""
    ok = pd.Series(True, index=df.index)
    have = df["data_fingerprint"].map(lambda v: not _missing(v))
    keys = df[["seed", "train_tokens"]].astype(object).where(df[["seed", "train_tokens"]].notna(), None)
    groups: dict[tuple, list] = {}
    for i in df.index[have]:
        groups.setdefault((keys.at[i, "seed"], keys.at[i, "train_tokens"]), []).append(i)
    for (seed, tokens), idx in groups.items():
        counts = Counter(df.loc[idx, "data_fingerprint"])
        if len(counts) < 2:
            continue
        (top, n_top), (_, n_second) = counts.most_common(2)
        bad = idx if n_top == n_second else [i for i in idx if df.at[i, "data_fingerprint"] != top]
        ok[bad] = False
        names = ", ".join(str(df.at[i, "run_name"]) for i in bad)
        why = ("no majority fingerprint" if n_top == n_second
               else f"majority fingerprint {str(top)[:12]} ({n_top}/{len(idx)} runs)")
        msg = (f"data fingerprint mismatch among runs with seed={seed}, train_tokens={tokens}: "
               f"{why}; disagreeing: {names}")
        warnings.warn(msg, FingerprintWarning, stacklevel=3)
        log.warning(msg)
    return ok


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
