"""Sweep bookkeeping: a Hydra callback that reports on a multirun when it ends.

It reads every ``summary.json`` under the sweep directory, prints one comparison table
(params, FLOPs/token, eval loss, accuracy, tokens/s, fingerprint) and writes it to
``comparison.md``, warns when runs that should have seen identical data show different
fingerprints, and closes with one line: how many runs completed, resumed, were skipped
(already complete) and failed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


def load_summaries(sweep_dir: str | Path) -> list[dict]:
    out = []
    for path in sorted(Path(sweep_dir).rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        summary["_dir"] = str(path.parent)
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


def count_line(summaries: list[dict], skipped: int = 0) -> str:
    done = [s for s in summaries if s.get("status") == "complete"]
    resumed = sum(1 for s in done if s.get("resumed_from"))
    failed = sum(1 for s in summaries if s.get("status") in ("failed", "interrupted", "running"))
    return (f"sweep: {len(summaries) + skipped} runs: {len(done) - resumed} completed, {resumed} resumed, "
            f"{skipped} skipped (already complete), {failed} failed")


class SweepReport(Callback):
    """Hydra callback (configured in conf/config.yaml under hydra.callbacks)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self._before = {s["_dir"] for s in load_summaries(sweep_dir) if s.get("status") == "complete"}

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summaries = load_summaries(sweep_dir)
        if not summaries:
            print(f"sweep: no run records under {sweep_dir}")
            return
        table = comparison_table(summaries)
        warnings = fingerprint_warnings(summaries)
        text = f"# Sweep {sweep_dir.name}\n\n{table}\n"
        if warnings:
            text += "\n" + "\n".join(f"WARNING: {w}" for w in warnings) + "\n"
        (sweep_dir / "comparison.md").write_text(text)
        print("\n" + table)
        for w in warnings:
            print(f"WARNING: {w}")
        skipped = len(getattr(self, "_before", set()))
        fresh = [s for s in summaries if s["_dir"] not in getattr(self, "_before", set())]
        print(f"comparison written to {sweep_dir / 'comparison.md'}")
        print(count_line(fresh, skipped))
        config_errors = config_error_messages(fresh)
        for msg in config_errors:
            print(f"archcmp-train: error: {msg}", file=sys.stderr)
        if fresh and all(_is_config_error(s) for s in fresh):
            sys.exit(2)  # every job was misconfigured: the sweep itself is, say so in the exit code
