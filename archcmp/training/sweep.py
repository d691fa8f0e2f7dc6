"""Sweep bookkeeping: a Hydra callback that reports on a multirun when it ends.

Every launch gets a record ``<sweep dir>/launches/<UTC timestamp>/``: ``multirun.yaml`` (Hydra
rewrites the sweep directory's own copy at each launch) and ``jobs.jsonl``, one line per job of
this launch (its run directory; ``refused`` when the job would not touch a directory holding
another run, see :mod:`archcmp.training.identity`). The launch id reaches the jobs (other processes with
``launcher=joblib``) through the environment variable ``ARCHCMP_LAUNCH``.

At the end the report covers exactly this launch's jobs: one comparison table (params,
FLOPs/token, eval loss, accuracy, tokens/s, fingerprint) printed and written to
``comparison.md`` (also kept in the launch record), a warning when runs that should have seen
identical data show different fingerprints, and one closing line: how many runs completed,
resumed, were skipped (already complete), refused and failed. Runs that earlier launches left
in the same folder are listed after it, in a table labelled as such.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


LAUNCH_ENV = "ARCHCMP_LAUNCH"
LAUNCHES = "launches"


def load_summaries(sweep_dir: str | Path) -> list[dict]:
    from archcmp.analysis.common.runs import find_run_dirs

    out = []
    root = Path(sweep_dir)
    for path in [d / "summary.json" for d in find_run_dirs(root)] if root.exists() else []:
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        summary["_dir"] = str(path.parent)
        summary["_mtime"] = path.stat().st_mtime
        out.append(summary)
    return out


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def comparison_table(summaries: list[dict]) -> str:
    header = ("| run | arch | size | params | FLOPs/token | eval loss (nats/target token) | eval bpc | "
              "target-token accuracy | tokens/s | status | data fingerprint |")
    lines = [header, "|" + "---|" * 11]
    for s in sorted(summaries, key=lambda s: (s.get("size", ""), s.get("seed", 0), s.get("arch", ""))):
        ev = s.get("eval_metrics") or {}
        lines.append("| " + " | ".join([
            s.get("run_name", Path(s["_dir"]).name), s.get("arch", "?"), s.get("size", "?"),
            _fmt(s.get("params_total"), ","), _fmt(s.get("flops_per_token"), ",.0f"),
            _fmt(s.get("eval_loss"), ".4f"), _fmt(ev.get("eval_bpc"), ".3f"), _fmt(ev.get("eval_accuracy"), ".3f"),
            _fmt(s.get("tokens_per_sec"), ",.0f"), s.get("status", "?"), (s.get("data_fingerprint") or "")[:16],
        ]) + " |")
    return "\n".join(lines)


def fingerprint_warnings(summaries: list[dict]) -> list[str]:
    """Runs with the same task, seed and step budget must have consumed identical data."""
    groups: dict[tuple, set] = {}
    for s in summaries:
        if s.get("status") != "complete":
            continue
        key = (s.get("task"), s.get("seed"), s.get("steps"), s.get("batch_size"), s.get("seq_len"))
        groups.setdefault(key, set()).add(s.get("data_fingerprint"))
    return [f"fingerprints differ for task={k[0]} seed={k[1]} steps={k[2]}: {sorted(v)}"
            for k, v in groups.items() if len(v) > 1]


def _is_config_error(summary: dict) -> bool:
    """Did this run fail on a bad setting? Decided on the summary's ``error_kind``."""
    kind = summary.get("error_kind")
    if kind is None:  # summaries written before error_kind existed say it only in the text's prefix
        kind = "config" if str(summary.get("error") or "").startswith("ConfigError: ") else None
    return summary.get("status") == "failed" and kind == "config"


def config_error_messages(summaries: list[dict]) -> list[str]:
    """Distinct bad-config messages of failed runs (a bad override fails every job alike)."""
    # ``error`` is "<exception class>: <message>"; the report prints the message alone
    return sorted({str(s["error"]).partition(": ")[2] for s in summaries if _is_config_error(s)})


def count_line(summaries: list[dict], skipped: int = 0, refused: int = 0) -> str:
    done = [s for s in summaries if s.get("status") == "complete"]
    resumed = sum(1 for s in done if s.get("resumed_from"))
    failed = sum(1 for s in summaries if s.get("status") in ("failed", "interrupted", "running"))
    return (f"sweep: {len(summaries) + skipped + refused} runs: {len(done) - resumed} completed, {resumed} resumed, "
            f"{skipped} skipped (already complete), " + (f"{refused} refused (other settings or another writer), "
                                                        if refused else "") + f"{failed} failed")


# ---- the launch record ---------------------------------------------------------------------------
def _launch_dir(sweep_dir: str | Path, launch: str) -> Path:
    return Path(sweep_dir) / LAUNCHES / launch


def _note(sweep_dir: str | Path, record: dict) -> None:
    launch = os.environ.get(LAUNCH_ENV)
    if not launch:  # the callback is not configured: no launch record
        return
    path = _launch_dir(sweep_dir, launch) / "jobs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one short line per write (O_APPEND): parallel jobs do not interleave
        f.write(json.dumps(record) + "\n")


def note_refused(run_dir: str | Path, message: str) -> None:
    """A job of this launch refused its run directory (the directory's records are another run's)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    _note(hc.sweep.dir, {"dir": str(Path(run_dir)), "job": int(hc.job.num), "refused": message})


def launch_jobs(sweep_dir: str | Path, launch: str) -> tuple[list[Path], int]:
    """(run directories the launch's jobs trained or skipped, number of jobs refused)."""
    path = _launch_dir(sweep_dir, launch) / "jobs.jsonl"
    started: dict[int, Path] = {}
    refused: set[int] = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("refused"):
            refused.add(int(rec["job"]))
        else:
            started[int(rec["job"])] = Path(rec["dir"])
    return list(dict.fromkeys(d for j, d in sorted(started.items()) if j not in refused)), len(refused)


def _keep_multirun_yaml(sweep_dir: Path, launch: str) -> None:
    src, dest = sweep_dir / "multirun.yaml", _launch_dir(sweep_dir, launch) / "multirun.yaml"
    if src.exists() and not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def _under(path: str | Path, roots: list[Path]) -> bool:
    p = Path(path).resolve()
    return any(p == r or p.is_relative_to(r) for r in roots)


class SweepReport(Callback):
    """Hydra callback (configured in conf/config.yaml under hydra.callbacks)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        self._launch = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        os.environ[LAUNCH_ENV] = self._launch  # inherited by the job processes
        self._t0 = time.time()

    def on_job_start(self, config, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN or not os.environ.get(LAUNCH_ENV):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        _keep_multirun_yaml(sweep_dir, os.environ[LAUNCH_ENV])
        _note(sweep_dir, {"dir": str(Path(config.hydra.runtime.output_dir)), "job": int(config.hydra.job.num)})

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        launch = getattr(self, "_launch", None) or os.environ.get(LAUNCH_ENV, "")
        _keep_multirun_yaml(sweep_dir, launch)
        jobs, refused = launch_jobs(sweep_dir, launch)
        roots = [d.resolve() for d in jobs]
        everything = load_summaries(sweep_dir)
        summaries = [s for s in everything if _under(s["_dir"], roots)]
        earlier = [s for s in everything if not _under(s["_dir"], roots)]
        if not summaries and not refused:
            print(f"sweep: no run records under {sweep_dir}")
            return
        table = comparison_table(summaries)
        warnings = fingerprint_warnings(summaries)
        text = f"# Sweep {sweep_dir.name} (launch {launch})\n\n{table}\n"
        if warnings:
            text += "\n" + "\n".join(f"WARNING: {w}" for w in warnings) + "\n"
        if earlier:
            text += (f"\n## Earlier runs in this folder (not part of launch {launch})\n\n"
                     f"{comparison_table(earlier)}\n")
        (sweep_dir / "comparison.md").write_text(text)
        if launch:
            _launch_dir(sweep_dir, launch).mkdir(parents=True, exist_ok=True)
            (_launch_dir(sweep_dir, launch) / "comparison.md").write_text(text)
        print("\n" + table)
        for w in warnings:
            print(f"WARNING: {w}")
        if earlier:
            print(f"(+ {len(earlier)} run(s) from earlier launches in this folder: see comparison.md)")
        # a complete summary this launch did not rewrite: the job skipped it (already complete)
        t0 = getattr(self, "_t0", 0.0)
        skipped = [s for s in summaries if s.get("status") == "complete" and s["_mtime"] < t0]
        fresh = [s for s in summaries if not (s.get("status") == "complete" and s["_mtime"] < t0)]
        print(f"comparison written to {sweep_dir / 'comparison.md'}")
        print(count_line(fresh, len(skipped), refused))
        config_errors = config_error_messages(fresh)
        for msg in config_errors:
            print(f"archcmp-train: error: {msg}", file=sys.stderr)
        if fresh and all(_is_config_error(s) for s in fresh):
            sys.exit(2)  # every job was misconfigured: the sweep itself is, say so in the exit code
