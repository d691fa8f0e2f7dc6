"""``archcmp-analyze sweep SWEEP_DIR --out DIR``: a claims evidence table from any sweep.

The cheap claim experiments (norm position, heads, positional encodings, loss_on, sparse
attention, the four architectures per task, ...) are plain ``experiment=`` sweeps whose
runs differ in a few config keys. This exporter reads every run directory under the sweep
(``summary.json`` + ``config.yaml``, and ``metrics.jsonl`` for curve metrics), labels each run
with a *condition* and a *group* built from format strings over its config, and writes:

* ``seeds.csv`` -- ``condition, group, seed, metric, value`` (one number per seed, what
  :mod:`archcmp.claims` reads);
* ``runs.csv`` -- one row per run: labels, status, steps, wall time, every exported metric;
* ``table.md`` -- per (condition, group) the mean and 95% t-interval over seeds of each metric;
* ``seeds.png`` -- per metric, every seed as a dot and the mean with its interval, one panel
  row per metric, groups side by side within each condition;
* ``curves.png`` -- train loss vs step of every run (one panel per condition, one colour per
  group), to check that the models learned before they are compared.

Labels: ``--condition`` / ``--group`` take Python format strings over the run's context: its
resolved ``config.yaml`` with ``model`` replaced by the full model config of ``summary.json``
(e.g. ``'{size.name}'``, ``'L{model.n_layers}/lr{optimizer.lr:g}'``, ``'h{model.n_heads}'``).

Metrics (``--metric NAME=SOURCE``, repeatable; ``NAME`` alone means ``SOURCE=NAME``):

* a key of the summary's ``eval_metrics`` (``eval_loss``, ``eval_accuracy``, ``eval_exact_match``,
  ...) -- the final evaluation;
* ``diverged``: 1 if the run stopped on a non-finite loss or its last logged train loss is above its
  first logged one, else 0 (log every step to make "first" the loss at initialisation); NaN for a
  seed stopped because another seed of the same process went non-finite;
* ``final_train_loss``: the last logged train loss (NaN for a run that stopped on a non-finite loss).

A run that failed for any other reason than a non-finite loss, or is not complete, is left out
of ``seeds.csv`` and listed in ``runs.csv`` with its status; seeds come from ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from archcmp.analysis.common.runs import find_run_dirs, load_metrics
from archcmp.claims.evidence import SEED_COLUMNS, mean_interval

FLOAT = "%.6g"
CURVE_METRICS = ("diverged", "final_train_loss")


class _Ctx(dict):
    """A nested dict whose keys also read as attributes, for ``str.format`` field paths."""

    def __getattr__(self, name):
        try:
            v = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _Ctx(v) if isinstance(v, dict) else v


def run_context(run_dir: Path) -> dict:
    """The run's resolved config with ``model`` = the full model config of its summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg = dict(cfg or {})
    if isinstance(summary.get("model"), dict):
        cfg["model"] = summary["model"]
    return {"config": cfg, "summary": summary}


def label(fmt: str, cfg: dict, run_dir: Path) -> str:
    try:
        return fmt.format(**{k: (_Ctx(v) if isinstance(v, dict) else v) for k, v in cfg.items()})
    except (KeyError, AttributeError, IndexError, ValueError) as exc:
        raise ValueError(f"label {fmt!r}: cannot format for run {run_dir} ({type(exc).__name__}: {exc})") from None


def _nonfinite_stop(summary: dict) -> bool:
    return summary.get("status") == "failed" and summary.get("error_kind") == "FloatingPointError"


def _stopped_by_other_member(run_dir: Path, summary: dict) -> bool:
    """Seeds trained together stop together: the error names the member whose loss went
    non-finite (``..., member <run_name>)``); the others were cut short, not diverged."""
    m = re.search(r", member ([^)\s]+)\)", str(summary.get("error") or ""))
    return bool(m) and m.group(1) != run_dir.name


def curve_metrics(run_dir: Path, summary: dict) -> dict[str, float]:
    """``diverged`` and ``final_train_loss`` from the run's logged train losses (both NaN for a
    seed that another seed's divergence stopped: it has no outcome)."""
    if _nonfinite_stop(summary) and _stopped_by_other_member(run_dir, summary):
        return {"diverged": math.nan, "final_train_loss": math.nan}
    m = load_metrics(run_dir)
    losses = m["train_loss"].dropna().to_numpy(float) if "train_loss" in m.columns else np.array([])
    if _nonfinite_stop(summary) or (len(losses) and not np.isfinite(losses).all()):
        return {"diverged": 1.0, "final_train_loss": math.nan}
    if len(losses) < 2:
        raise ValueError(f"{run_dir}: fewer than 2 logged train losses; cannot tell whether it diverged")
    return {"diverged": float(losses[-1] > losses[0]), "final_train_loss": float(losses[-1])}


def collect(sweep: Path, condition: str, group: str, metrics: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs table, long seed table) for every run directory under ``sweep``."""
    rows, long = [], []
    for rd in find_run_dirs(sweep):
        ctx = run_context(rd)
        s, cfg = ctx["summary"], ctx["config"]
        row = {"run": str(rd.relative_to(sweep)), "condition": label(condition, cfg, rd),
               "group": label(group, cfg, rd), "seed": int(s["seed"]), "status": s.get("status"),
               "error_kind": s.get("error_kind"), "steps": s.get("steps"),
               "params_total": s.get("params_total"), "wall_seconds": s.get("wall_seconds")}
        usable = s.get("status") == "complete" or _nonfinite_stop(s)
        curves = curve_metrics(rd, s) if usable and any(src in CURVE_METRICS for src in metrics.values()) else {}
        ev = s.get("eval_metrics") or {}
        for name, src in metrics.items():
            if src in CURVE_METRICS:
                v = curves.get(src, math.nan)
            elif src in ev:
                v = float(ev[src]) if s.get("status") == "complete" else math.nan
            elif s.get("status") == "complete":
                raise ValueError(f"--metric {name}={src}: {rd}/summary.json eval_metrics has no {src!r} "
                                 f"(has {', '.join(sorted(ev))})")
            else:
                v = math.nan
            row[name] = v
            if usable:
                long.append({"condition": row["condition"], "group": row["group"], "seed": row["seed"],
                             "metric": name, "value": v})
        rows.append(row)
    if not rows:
        raise ValueError(f"no run directories (summary.json) under {sweep}")
    runs = pd.DataFrame(rows).sort_values(["condition", "group", "seed"]).reset_index(drop=True)
    seeds = pd.DataFrame(long, columns=list(SEED_COLUMNS))
    dup = seeds.duplicated(["condition", "group", "seed", "metric"])
    if dup.any():
        r = seeds[dup].iloc[0]
        raise ValueError(f"two runs share condition={r['condition']!r}, group={r['group']!r}, seed={r['seed']}: "
                         "the --condition/--group labels do not tell the sweep's runs apart")
    return runs, seeds.sort_values(list(SEED_COLUMNS[:4])).reset_index(drop=True)


def summary_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95% t-interval and seed count per (metric, condition, group)."""
    out = []
    for (metric, cond, grp), g in seeds.groupby(["metric", "condition", "group"], sort=True):
        v = g["value"].to_numpy(float)
        fin = v[np.isfinite(v)]
        m, lo, hi = mean_interval(fin) if len(fin) else (math.nan,) * 3
        out.append({"metric": metric, "condition": cond, "group": grp, "mean": m, "lo": lo, "hi": hi,
                    "n_seeds": len(fin), "n_nonfinite": int(len(v) - len(fin))})
    return pd.DataFrame(out)


def _fmt(x) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.4g}"


def markdown(table: pd.DataFrame) -> str:
    lines = ["| metric | condition | group | mean [95% t-interval over seeds] | seeds |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        extra = f" (+{r.n_nonfinite} non-finite)" if r.n_nonfinite else ""
        lines.append(f"| {r.metric} | {r.condition} | {r.group} | {_fmt(r.mean)} [{_fmt(r.lo)}, {_fmt(r.hi)}] "
                     f"| {r.n_seeds}{extra} |")
    return "\n".join(lines) + "\n"


def plot(seeds: pd.DataFrame, table: pd.DataFrame, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    metrics = sorted(seeds["metric"].unique())
    conds = sorted(seeds["condition"].unique())
    groups = sorted(seeds["group"].unique())
    fig = Figure(figsize=(max(5.5, 2.0 + 0.5 * len(conds) * len(groups)), 3.6 * len(metrics)))
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    width = 0.8 / len(groups)
    for ax, metric in zip(axes, metrics):
        for gi, grp in enumerate(groups):
            xs = np.arange(len(conds)) - 0.4 + width * (gi + 0.5)
            for ci, cond in enumerate(conds):
                v = seeds[(seeds["metric"] == metric) & (seeds["condition"] == cond) & (seeds["group"] == grp)]["value"]
                ax.plot(np.full(len(v), xs[ci]), v, ".", color=f"C{gi}", alpha=0.5)
                t = table[(table["metric"] == metric) & (table["condition"] == cond) & (table["group"] == grp)]
                if len(t):
                    r = t.iloc[0]
                    err = [[r["mean"] - r["lo"]], [r["hi"] - r["mean"]]] if np.isfinite(r["lo"]) else None
                    ax.errorbar([xs[ci]], [r["mean"]], yerr=err, fmt="o", color=f"C{gi}", capsize=3,
                                label=grp if ci == 0 else None)
        ax.set_xticks(np.arange(len(conds)), conds, rotation=30 if len(conds) > 4 else 0, fontsize=8)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_title(f"{title}: seeds (dots), mean, 95% t-interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_curves(sweep: Path, runs: pd.DataFrame, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    conds = sorted(runs["condition"].unique())
    groups = sorted(runs["group"].unique())
    cols = min(len(conds), 4)
    nrows = -(-len(conds) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.9 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, cond in zip(axes, conds):
        for r in runs[runs["condition"] == cond].itertuples():
            m = load_metrics(sweep / r.run)
            if "train_loss" not in m.columns:
                continue
            m = m.dropna(subset=["train_loss"])
            gi = groups.index(r.group)
            ax.plot(m["step"], m["train_loss"], color=f"C{gi}", lw=0.8, alpha=0.7,
                    label=r.group if r.seed == runs["seed"].min() else None)
        ax.set_title(cond, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(conds):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: train loss of every seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def export(sweep: Path, out: Path, condition: str, group: str, metrics: dict[str, str], title: str) -> list[Path]:
    runs, seeds = collect(sweep, condition, group, metrics)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(seeds)
    paths = [out / "seeds.csv", out / "runs.csv", out / "table.md"]
    seeds.to_csv(paths[0], index=False, float_format=FLOAT, lineterminator="\n")
    runs.to_csv(paths[1], index=False, float_format=FLOAT, lineterminator="\n")
    paths[2].write_text(markdown(table))
    if len(seeds):
        paths.append(plot(seeds, table, out / "seeds.png", title))
        paths.append(plot_curves(sweep, runs, out / "curves.png", title))
    return paths


def _parse_metric(spec: str) -> tuple[str, str]:
    name, _, src = spec.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--metric {spec!r}: expected NAME or NAME=SOURCE")
    return name, src or name


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="archcmp-analyze sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="sweep directory (walked for run directories)")
    p.add_argument("--out", type=Path, required=True, help="results folder (seeds.csv, runs.csv, table.md, seeds.png)")
    p.add_argument("--condition", required=True, help="format string for the condition label, e.g. '{size.name}'")
    p.add_argument("--group", required=True, help="format string for the group label, e.g. '{arch.name}'")
    p.add_argument("--metric", action="append", type=_parse_metric, required=True,
                   help="NAME[=SOURCE]: SOURCE an eval_metrics key, diverged or final_train_loss (repeatable)")
    p.add_argument("--title", default=None, help="figure title (default: the out folder's name)")
    args = p.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"sweep: sweep directory not found: {args.sweep}")
        return 2
    try:
        paths = export(args.sweep, args.out, args.condition, args.group, dict(args.metric),
                       args.title or args.out.name)
    except ValueError as exc:
        print(f"sweep: {exc}")
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0
