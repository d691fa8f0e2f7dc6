"""``archcmp-analyze grokking PATH [PATH...]``: delayed generalisation (Power et al. 2022).

Reads, for every run under the PATHs, the evaluations in ``metrics.jsonl`` (``train_exact_match``
on the training pairs and ``eval_exact_match`` on the held-out ones; the trainer logs both when
``train.eval_train_examples > 0``), the parameter norm of the training log (``param_norm``) and
the run's weight decay, training fraction and seed from ``.hydra/config.yaml``.

Per run: ``train_reached_at`` = first evaluation with train exact match >= ``--train-threshold``
(default 0.99), ``val_reached_at`` = first with held-out exact match >= ``--threshold`` (0.95),
``delay_ratio`` = their ratio. Per (arch, train fraction, weight decay): mean and 95% t-interval
over seeds of those steps and ratios (``delays.csv``).

The pre-set criterion (issue 17, :func:`criterion`): with weight decay, on every seed train reaches
its threshold and held-out accuracy reaches its own at least ``--grok-delay`` (default 5) times
later; without weight decay, every seed's held-out accuracy stays below the threshold at least
until the step at which the same seed with weight decay reached it.

Writes into ``--out``: ``curves.csv``, ``summary.json`` (per run), ``delays.csv``,
``criterion_measured.json`` (when there are runs without weight decay), ``table.md`` and
``grokking.png`` (rows: arch x train fraction; columns: exact match, loss, parameter norm vs step on
a log axis; one line per seed).

Across architectures and fractions (:mod:`archcmp.analysis.grokking.across`, experiment=grokking_archs),
from the weight-decay runs: ``groups.csv`` (per arch x fraction: groks on every seed, t_train /
t_val / ratio with 95% intervals, censored when a seed never generalised), ``arch_pairs.csv``,
``fraction_slopes.csv``, ``seeds.csv`` (claims seed table: smallest fraction that generalised, per
arch and seed), ``heldout_by_arch.png`` and ``delay_vs_fraction.png``; with
``--reference-fraction F`` also ``criterion.json``: every architecture of ``--archs`` groks on every
seed at F, ``partial`` listing the (arch, fraction) groups of ``--fractions`` not run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.emergence.plots import ARCH_ORDER, markdown_table
from archcmp.analysis.grokking import across
from archcmp.analysis.grokking.across import t_interval
from archcmp.analysis.common.wandb_log import add_options, log_outputs
from archcmp.analysis.common.cli import out_dir, probe_parser

KEYS = ["arch", "train_frac", "weight_decay"]


def build_parser() -> argparse.ArgumentParser:
    p = probe_parser("grokking", __doc__)
    p.add_argument("--threshold", type=float, default=0.95, help="held-out exact match that counts as generalised")
    p.add_argument("--train-threshold", type=float, default=0.99, help="train exact match that counts as memorised")
    p.add_argument("--grok-delay", type=float, default=5.0,
                   help="val/train step ratio that counts as delayed generalisation (default 5)")
    p.add_argument("--linear-x", action="store_true", help="linear step axis (default log)")
    p.add_argument("--reference-fraction", type=float, default=None,
                   help="write criterion.json: every --archs groks on every seed at this train fraction")
    p.add_argument("--archs", default=",".join(ARCH_ORDER), help="architectures the sweep should hold (comma list)")
    p.add_argument("--fractions", default=None,
                   help="train fractions the sweep should hold (comma list; missing groups mark it partial)")
    p.add_argument("--include-running", action="store_true",
                   help="also read runs still training (no summary.json yet): their curves so far; a group "
                        "with such a run is reported as in progress")
    add_options(p)
    return p


def load_curves(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(evaluations, parameter norms): one row per (run, evaluation step) with arch, train_frac,
    weight_decay, seed, train/val exact match and loss; one row per (run, logged training step)
    with ``param_norm``."""
    from omegaconf import OmegaConf

    from archcmp.analysis.common.runs import load_metrics

    evals, norms = [], []
    for d in run_dirs:
        m = load_metrics(d)
        if m.empty or "eval_exact_match" not in m.columns or "train_exact_match" not in m.columns:
            print(f"grokking: skipping {d}: metrics.jsonl has no train_exact_match/eval_exact_match "
                  "(train with train.eval_train_examples > 0)", file=sys.stderr)
            continue
        # a job still training has its resolved config.yaml but neither .hydra/ nor summary.json yet
        cfg = OmegaConf.load(d / ".hydra" / "config.yaml" if (d / ".hydra").is_dir() else d / "config.yaml")
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        keys = {"run": summary.get("run_name", cfg.get("run_name", d.name)), "arch": cfg.arch.name,
                "train_frac": float(cfg.task.params.train_frac), "weight_decay": float(cfg.optimizer.weight_decay),
                "seed": int(cfg.seed), "size": str(cfg.size.name), "complete": summary.get("status") == "complete"}
        ev = m.dropna(subset=["eval_exact_match", "train_exact_match"])
        ev = ev.drop_duplicates("step", keep="last").sort_values("step")
        evals.append(pd.DataFrame({**keys, "step": ev["step"].astype(int), "train_acc": ev["train_exact_match"],
                                   "val_acc": ev["eval_exact_match"], "train_loss": ev.get("train_eval_loss"),
                                   "val_loss": ev["eval_loss"]}))
        if "param_norm" in m.columns:
            pn = m.dropna(subset=["param_norm"]).drop_duplicates("step", keep="last").sort_values("step")
            norms.append(pd.DataFrame({**keys, "step": pn["step"].astype(int), "param_norm": pn["param_norm"]}))
    cat = lambda f: pd.concat(f, ignore_index=True) if f else pd.DataFrame()  # noqa: E731
    return cat(evals), cat(norms)


def running_run_dirs(paths) -> list[Path]:
    """Run directories under ``paths`` still training: ``metrics.jsonl`` and ``config.yaml`` but no
    ``summary.json`` yet (``--include-running``; runs set aside by train.overwrite are left out)."""
    from archcmp.analysis.common.runs import is_set_aside

    found = set()
    for root in paths:
        for m in Path(root).rglob("metrics.jsonl"):
            d = m.parent
            if (d / "config.yaml").exists() and not (d / "summary.json").exists() and not any(
                    is_set_aside(part) for part in d.parts) and "analysis" not in d.relative_to(root).parts:
                found.add(d)
    return sorted(found)


def first_step(steps: np.ndarray, acc: np.ndarray, threshold: float) -> float:
    """First logged step with ``acc >= threshold`` (NaN if never)."""
    hit = np.flatnonzero(np.asarray(acc) >= threshold)
    return float(np.asarray(steps)[hit[0]]) if hit.size else np.nan


def summarize(curves: pd.DataFrame, threshold: float, train_threshold: float = 0.99,
              grok_delay: float = 5.0) -> pd.DataFrame:
    """One row per run: when train and held-out accuracy reached their thresholds, the ratio."""
    rows = []
    for (run, arch, frac, wd, seed), g in curves.groupby(["run", *KEYS, "seed"], sort=False):
        s, tr, va = g["step"].to_numpy(), g["train_acc"].to_numpy(), g["val_acc"].to_numpy()
        t_train, t_val = first_step(s, tr, train_threshold), first_step(s, va, threshold)
        delay = t_val / t_train if np.isfinite(t_val) and np.isfinite(t_train) else np.nan
        extra = {k: g[k].iloc[0] for k in ("size", "complete") if k in g.columns}
        rows.append({"run": run, "arch": arch, **extra, "train_frac": frac, "weight_decay": wd, "seed": seed,
                     "steps": int(s.max()), "train_reached_at": t_train, "val_reached_at": t_val,
                     "delay_ratio": delay, "final_train_acc": float(tr[-1]), "final_val_acc": float(va[-1]),
                     "grokked": bool(np.isfinite(delay) and delay >= grok_delay)})
    t = pd.DataFrame(rows)
    order = {a: i for i, a in enumerate(ARCH_ORDER)}
    return t.assign(_o=t["arch"].map(order)).sort_values(
        ["_o", "train_frac", "weight_decay", "seed"], ascending=[True, True, False, True]).drop(
        columns="_o").reset_index(drop=True)


def delays(table: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, train_frac, weight_decay): mean [95% interval] over seeds of the steps and ratio."""
    rows = []
    for (arch, frac, wd), g in table.groupby(KEYS, sort=False):
        row = {"arch": arch, "train_frac": frac, "weight_decay": wd, "n_seeds": len(g),
               "n_generalised": int(np.isfinite(g["val_reached_at"]).sum())}
        for col in ("train_reached_at", "val_reached_at", "delay_ratio"):
            mean, lo, hi, _ = t_interval(g[col])
            row.update({col: mean, f"{col}_lo": lo, f"{col}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def criterion(table: pd.DataFrame, grok_delay: float = 5.0) -> dict:
    """The pre-set success criterion, judged per (arch, train_frac) group and overall."""
    groups = []
    for (arch, frac), g in table.groupby(["arch", "train_frac"], sort=False):
        on, off = g[g["weight_decay"] > 0], g[g["weight_decay"] == 0]
        delayed = bool(len(on) and (on["delay_ratio"] >= grok_delay).all())
        later = {}
        for _, r in off.iterrows():  # the same seed with weight decay on
            mate = on[on["seed"] == r["seed"]]
            if mate.empty or not np.isfinite(mate["val_reached_at"].iloc[0]):
                continue
            bar = mate["val_reached_at"].iloc[0]
            # never reached within a run at least that long, or reached no earlier
            later[int(r["seed"])] = bool((np.isnan(r["val_reached_at"]) and r["steps"] >= bar)
                                         or r["val_reached_at"] >= bar)
        control = bool(len(off)) and len(later) == len(off) and all(later.values())
        groups.append({"arch": arch, "train_frac": float(frac), "n_seeds_wd": int(len(on)),
                       "n_seeds_no_wd": int(len(off)), "all_seeds_delayed": delayed,
                       "no_wd_later_or_never": control, "met": delayed and control,
                       "delay_ratio_per_seed": [float(x) for x in on["delay_ratio"]],
                       "no_wd_val_reached_at_per_seed": [None if np.isnan(x) else float(x) for x in off["val_reached_at"]]})
    return {"met": bool(groups) and all(g["met"] for g in groups), "groups": groups}


def plot_curves(curves: pd.DataFrame, norms: pd.DataFrame, out: Path, logx: bool = True):
    """Rows: (arch, train_frac); columns: exact match, loss, parameter norm vs step; one line per
    seed; solid = weight decay on, dashed = off; blue = train, red = held out."""
    from matplotlib.figure import Figure

    panels = [k for k in curves[["arch", "train_frac"]].drop_duplicates().itertuples(index=False)]
    order = {a: i for i, a in enumerate(ARCH_ORDER)}
    panels.sort(key=lambda k: (order.get(k[0], 99), k[1]))
    fig = Figure(figsize=(12, 3.0 * len(panels)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(panels), 3, squeeze=False))
    for row, (arch, frac) in zip(axes, panels):
        sel = (curves["arch"] == arch) & (curves["train_frac"] == frac)
        for (wd, seed), g in curves[sel].groupby(["weight_decay", "seed"]):
            ls, first = ("-" if wd else "--"), seed == curves[sel]["seed"].min()
            row[0].plot(g["step"], g["train_acc"], ls=ls, color="C0", alpha=0.8, label=f"train, wd={wd:g}" if first else None)
            row[0].plot(g["step"], g["val_acc"], ls=ls, color="C3", alpha=0.8, label=f"held out, wd={wd:g}" if first else None)
            row[1].plot(g["step"], g["train_loss"], ls=ls, color="C0", alpha=0.8)
            row[1].plot(g["step"], g["val_loss"], ls=ls, color="C3", alpha=0.8)
        if not norms.empty:
            nsel = (norms["arch"] == arch) & (norms["train_frac"] == frac)
            for (wd, seed), g in norms[nsel].groupby(["weight_decay", "seed"]):
                row[2].plot(g["step"], g["param_norm"], ls="-" if wd else "--", color="C2", alpha=0.8,
                            label=f"wd={wd:g}" if seed == norms[nsel]["seed"].min() else None)
        row[0].set_ylabel("exact match")
        row[0].set_ylim(-0.02, 1.02)
        row[1].set_ylabel("cross-entropy per answer token")
        row[1].set_yscale("log")
        row[2].set_ylabel("parameter norm ||θ||₂")
        for ax, what in zip(row, ("accuracy", "loss", "weight norm")):
            ax.set_title(f"{arch}, train fraction {frac:g}: {what}", fontsize=9)
            ax.set_xlabel("step")
            if logx:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
        if row[2].get_legend_handles_labels()[0]:
            row[2].legend(fontsize=7)
    fig.savefig(out, dpi=120)
    return fig


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from archcmp.analysis.emergence.cli import locate_runs

    for name, v in (("--threshold", args.threshold), ("--train-threshold", args.train_threshold)):
        if not 0 < v <= 1:
            print(f"grokking: error: {name}={v}: must be in (0, 1]", file=sys.stderr)
            return 2
    if not args.grok_delay >= 1:
        print(f"grokking: error: --grok-delay={args.grok_delay}: must be >= 1", file=sys.stderr)
        return 2
    try:
        expected = _expected_groups(args)
    except ValueError as err:
        print(f"grokking: error: {err}", file=sys.stderr)
        return 2
    try:
        run_dirs = locate_runs(args.paths)
    except FileNotFoundError as err:
        if not args.include_running:
            print(f"grokking: error: {err}", file=sys.stderr)
            return 2
        run_dirs = []
    if args.include_running:
        run_dirs = sorted(set(run_dirs) | set(running_run_dirs(args.paths)))
    curves, norms = load_curves(run_dirs)
    if curves.empty:
        print("grokking: error: no run logged train and validation exact match", file=sys.stderr)
        return 1
    out = out_dir(args, "grokking")
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "curves.csv", index=False, float_format="%.6g")
    if not norms.empty:
        norms.to_csv(out / "param_norm.csv", index=False, float_format="%.6g")
    table = summarize(curves, args.threshold, args.train_threshold, args.grok_delay)
    (out / "summary.json").write_text(json.dumps(json.loads(table.to_json(orient="records")), indent=1))
    agg = delays(table)
    agg.to_csv(out / "delays.csv", index=False, float_format="%.6g")
    verdict = criterion(table, args.grok_delay)
    if (table["weight_decay"] == 0).any():  # the control rule needs runs without weight decay
        (out / "criterion_measured.json").write_text(json.dumps(verdict, indent=1))
    plot_curves(curves, norms, out / "grokking.png", logx=not args.linear_x)
    across_text, across_verdict = _across_outputs(out, curves, table, args, expected)
    text = ["# Grokking", "", f"Command: `archcmp-analyze grokking {' '.join(map(str, argv))}`  ",
            f"`train_reached_at`: first evaluation with train exact match ≥ {args.train_threshold}; "
            f"`val_reached_at`: first with held-out exact match ≥ {args.threshold} (nan: never); "
            f"`delay_ratio` = their ratio; `grokked` = ratio ≥ {args.grok_delay}.", "",
            "## Per (arch, train fraction, weight decay): mean [95% t-interval] over seeds", "",
            markdown_table(agg, index=False, floatfmt=".4g"), "", "## Per run", "",
            markdown_table(table.drop(columns="run"), index=False, floatfmt=".4g"), "",
            *across_text]
    if (table["weight_decay"] == 0).any():
        text += [f"Criterion (weight decay vs control) met: **{verdict['met']}** (details in criterion_measured.json)", ""]
    (out / "table.md").write_text("\n".join(text))
    if args.wandb:
        log_outputs(args, "grokking", out,
                    {"curves": out / "curves.csv", "delays": out / "delays.csv", "grokking": out / "grokking.png",
                     "table_md": out / "table.md"},
                    summary={f"{r['arch']}/f{r['train_frac']:g}/wd{r['weight_decay']:g}/s{r['seed']}/final_val_acc":
                             r["final_val_acc"] for _, r in table.iterrows()})
    met = across_verdict["met"] if across_verdict else verdict["met"]
    print(f"grokking: {table['run'].nunique()} runs; criterion met: {met}; wrote {out}/table.md")
    return 0


def _expected_groups(args) -> tuple[list[str], list[float] | None]:
    """--archs and --fractions parsed and checked (a ValueError naming the option and value)."""
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCH_ORDER]
    if not archs or bad:
        raise ValueError(f"--archs={args.archs}: each must be one of {', '.join(ARCH_ORDER)}")
    fracs = None
    if args.fractions is not None:
        try:
            fracs = [float(f) for f in args.fractions.split(",")]
        except ValueError:
            fracs = []
        if not fracs or not all(0 < f < 1 for f in fracs):
            raise ValueError(f"--fractions={args.fractions}: must be a comma list of numbers in (0, 1)")
    if args.reference_fraction is not None and not 0 < args.reference_fraction < 1:
        raise ValueError(f"--reference-fraction={args.reference_fraction}: must be in (0, 1)")
    return archs, fracs


def _across_outputs(out: Path, curves: pd.DataFrame, table: pd.DataFrame, args, expected) -> tuple[list[str], dict | None]:
    """The across-architecture files (weight-decay runs); returns table.md lines and the verdict
    of ``--reference-fraction`` (None without it)."""
    groups = across.group_verdicts(table, args.grok_delay)
    if groups.empty:
        return [], None
    pairs, slopes = across.compare_archs(groups), across.fraction_slopes(table)
    groups.drop(columns="val_reached_at_per_seed").to_csv(out / "groups.csv", index=False, float_format="%.6g")
    pairs.to_csv(out / "arch_pairs.csv", index=False, float_format="%.6g")
    slopes.to_csv(out / "fraction_slopes.csv", index=False, float_format="%.6g")
    across.threshold_fractions(table).to_csv(out / "seeds.csv", index=False, float_format="%.6g")
    across.plot_heldout_by_arch(curves, out / "heldout_by_arch.png", logx=not args.linear_x)
    across.plot_delay_vs_fraction(table, groups, out / "delay_vs_fraction.png")
    verdict = None
    if args.reference_fraction is not None:
        archs, fracs = expected
        verdict = across.across_criterion(groups, args.reference_fraction, archs, fracs)
        (out / "criterion.json").write_text(json.dumps(verdict, indent=1))
    show = groups[["arch", "train_frac", "n_seeds", "n_generalised", "n_grokked", "groks_every_seed", "censored",
                   "train_reached_at", "val_reached_at", "val_reached_at_lo", "val_reached_at_hi",
                   "delay_ratio", "delay_ratio_lo", "delay_ratio_hi"]]
    text = ["## With weight decay, per (arch, train fraction): groks on every seed? mean [95% interval]", "",
            "Censored: a seed never reached the held-out threshold, so no interval is given.", "",
            markdown_table(show, index=False, floatfmt=".4g"), "",
            "## Architectures compared on steps to the held-out threshold (non-overlapping intervals)", "",
            markdown_table(pairs, index=False, floatfmt=".4g") if len(pairs) else "(one architecture per fraction)", "",
            "## log10(steps to held-out threshold) vs train fraction, per architecture", "",
            markdown_table(slopes, index=False, floatfmt=".4g"), ""]
    if verdict is not None:
        text += [f"Criterion (every architecture groks on every seed at fraction {args.reference_fraction:g}) "
                 f"met: **{verdict['met']}**" + (" (partial sweep: groups missing)" if verdict["partial"] else ""), ""]
    return text, verdict
