"""``archcmp-analyze grokking PATH [PATH...]``: train vs validation exact match against training step.

Reads, for every run under the PATHs, the evaluations in ``metrics.jsonl`` (``train_exact_match``
on fixed training examples and ``eval_exact_match`` on the held-out ones; the trainer logs both when
``train.eval_train_examples > 0``, as ``experiment=grokking`` does) and the run's
``optimizer.weight_decay`` from ``.hydra/config.yaml``. Writes into ``--out`` (default
``<first PATH>/analysis/grokking``): ``curves.csv``, ``summary.json``, ``table.md`` and
``grokking.png`` (one panel per architecture; train and validation accuracy vs step, log x;
solid = weight decay on, dashed = off) plus ``grokking_loss.png`` (train vs validation loss).

Per run the table gives the first step at which train (validation) exact match reaches
``--threshold`` (default 0.95), their ratio (the delay of generalisation after memorisation:
grokking in the sense of Power et al. 2022 is a large ratio) and the final accuracies.
``generalised``: validation reached the threshold at all; ``grokked``: it did so at least
``--grok-delay`` (default 2) times later than training did -- reaching it together is ordinary
learning, not grokking.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.wandb_log import add_options, log_outputs

from archcmp.analysis.emergence_plots import ARCH_ORDER, markdown_table, plot_grokking


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archcmp-analyze grokking", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories")
    p.add_argument("--out", type=Path, default=None, help="output directory (default <first PATH>/analysis/grokking)")
    p.add_argument("--threshold", type=float, default=0.95, help="accuracy that counts as reached (default 0.95)")
    p.add_argument("--grok-delay", type=float, default=2.0,
                   help="val/train step ratio from which generalisation counts as delayed (default 2)")
    p.add_argument("--linear-x", action="store_true", help="linear step axis (default log)")
    add_options(p)
    return p


def load_curves(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per (run, evaluation step): arch, weight_decay, step, train/val accuracy and loss."""
    from omegaconf import OmegaConf

    from archcmp.analysis.runs import load_metrics

    frames = []
    for d in run_dirs:
        m = load_metrics(d)
        if m.empty or "eval_exact_match" not in m.columns or "train_exact_match" not in m.columns:
            print(f"grokking: skipping {d}: metrics.jsonl has no train_exact_match/eval_exact_match "
                  "(train with train.eval_train_examples > 0)", file=sys.stderr)
            continue
        cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        summary = json.loads((d / "summary.json").read_text())
        ev = m.dropna(subset=["eval_exact_match", "train_exact_match"])
        ev = ev.drop_duplicates("step", keep="last").sort_values("step")
        frames.append(pd.DataFrame({
            "run": summary.get("run_name", d.name), "arch": cfg.arch.name, "size": cfg.size.name,
            "weight_decay": float(cfg.optimizer.weight_decay), "step": ev["step"].astype(int),
            "train_acc": ev["train_exact_match"], "val_acc": ev["eval_exact_match"],
            "train_loss": ev.get("train_eval_loss"), "val_loss": ev["eval_loss"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def first_step(steps: np.ndarray, acc: np.ndarray, threshold: float) -> float:
    """First logged step with ``acc >= threshold`` (NaN if never)."""
    hit = np.flatnonzero(acc >= threshold)
    return float(steps[hit[0]]) if hit.size else np.nan


def summarize(curves: pd.DataFrame, threshold: float, grok_delay: float = 2.0) -> pd.DataFrame:
    rows = []
    for (run, arch, wd), g in curves.groupby(["run", "arch", "weight_decay"], sort=False):
        s, tr, va = g["step"].to_numpy(), g["train_acc"].to_numpy(), g["val_acc"].to_numpy()
        t_train, t_val = first_step(s, tr, threshold), first_step(s, va, threshold)
        delay = t_val / t_train if np.isfinite(t_val) and np.isfinite(t_train) else np.nan
        rows.append({"run": run, "arch": arch, "weight_decay": wd, "steps": int(s.max()),
                     "train_reached_at": t_train, "val_reached_at": t_val,
                     "delay_ratio": delay,
                     "final_train_acc": float(tr[-1]), "final_val_acc": float(va[-1]), "max_val_acc": float(va.max()),
                     "generalised": bool(np.isfinite(t_val)),
                     "grokked": bool(np.isfinite(delay) and delay >= grok_delay)})
    t = pd.DataFrame(rows)
    order = {a: i for i, a in enumerate(ARCH_ORDER)}
    return t.assign(_o=t["arch"].map(order)).sort_values(["_o", "weight_decay"], ascending=[True, False]).drop(
        columns="_o").reset_index(drop=True)


def plot_losses(curves: pd.DataFrame, out: Path, logx: bool = True):
    from matplotlib.figure import Figure

    archs = [a for a in ARCH_ORDER if a in set(curves["arch"])] + sorted(set(curves["arch"]) - set(ARCH_ORDER))
    fig = Figure(figsize=(3.6 * len(archs), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharey=True))
    for ax, arch in zip(axes, archs):
        for wd, g in curves[curves["arch"] == arch].groupby("weight_decay"):
            ls = "-" if wd else "--"
            ax.plot(g["step"], g["train_loss"], ls=ls, color="C0", label=f"train, wd={wd:g}")
            ax.plot(g["step"], g["val_loss"], ls=ls, color="C3", label=f"val, wd={wd:g}")
        if logx:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(arch, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy per answer token")
    axes[0].legend(fontsize=7)
    fig.savefig(out, dpi=130)
    return fig


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from archcmp.analysis.emergence import locate_runs

    if not 0 < args.threshold <= 1:
        print(f"grokking: error: --threshold={args.threshold}: must be in (0, 1]", file=sys.stderr)
        return 2
    if not args.grok_delay >= 1:
        print(f"grokking: error: --grok-delay={args.grok_delay}: must be >= 1", file=sys.stderr)
        return 2
    try:
        run_dirs = locate_runs(args.paths)
    except FileNotFoundError as err:
        print(f"grokking: error: {err}", file=sys.stderr)
        return 2
    curves = load_curves(run_dirs)
    if curves.empty:
        print("grokking: error: no run logged train and validation exact match", file=sys.stderr)
        return 1
    out = args.out or (args.paths[0] / "analysis" / "grokking")
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "curves.csv", index=False, float_format="%.6g")
    table = summarize(curves, args.threshold, args.grok_delay)
    (out / "summary.json").write_text(json.dumps(json.loads(table.to_json(orient="records")), indent=1))
    plot_grokking(curves, out=out / "grokking.png", logx=not args.linear_x,
                  title=f"exact match on training vs held-out pairs (solid: weight decay on, dashed: off)")
    plot_losses(curves, out / "grokking_loss.png", logx=not args.linear_x)
    text = ["# Grokking", "", f"Command: `archcmp-analyze grokking {' '.join(map(str, argv))}`  ",
            f"`train_reached_at` / `val_reached_at`: first evaluation step with exact match ≥ {args.threshold} on the "
            "training / held-out pairs (blank: never); `delay_ratio` = their ratio; `grokked` = "
            f"validation reached it at least {args.grok_delay}× later than training.", "",
            markdown_table(table.drop(columns="run"), index=False, floatfmt=".4g"), ""]
    (out / "table.md").write_text("\n".join(text))
    if args.wandb:
        log_outputs(args, "grokking", out,
                    {"curves": out / "curves.csv", "grokking": out / "grokking.png",
                     "grokking_loss": out / "grokking_loss.png", "table_md": out / "table.md"},
                    summary={f"{r['arch']}/wd{r['weight_decay']:g}/final_val_acc": r["final_val_acc"]
                             for _, r in table.iterrows()})
    print(f"grokking: {table['run'].nunique()} runs; wrote {out}/table.md, curves.csv and figures")
    return 0
