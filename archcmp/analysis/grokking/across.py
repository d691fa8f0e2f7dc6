"""Grokking across architectures and training fractions (experiment=grokking_archs; issue 17).

Input: the per-run table of :func:`archcmp.analysis.grokking.cli.summarize` (one row per seed with
``train_reached_at`` = t_train, ``val_reached_at`` = t_val, NaN when never reached, and
``delay_ratio`` = t_val / t_train). Only runs with weight decay are judged here; the no-weight-decay
control belongs to the single-architecture criterion.

* :func:`group_verdicts`: per (arch, train fraction), whether every seed grokked (ratio >= the
  delay) and the mean with a 95% t-interval over seeds of t_train, t_val and the ratio. When a seed
  never generalised the group is *censored*: the interval is left out (NaN), because a mean over the
  seeds that did would be biased early.
* :func:`compare_archs`: per fraction and pair of architectures, "earlier" / "later" when their
  t_val intervals do not overlap, else "unresolved".
* :func:`fraction_slopes`: per architecture with >= 3 fractions, the least-squares slope of
  log10 t_val against the fraction over every generalised seed, with a 95% interval.
* :func:`threshold_fractions`: per (arch, seed), the smallest swept fraction at which the seed
  generalised (the quantity claim C26 compares across model sizes), in the claims' seed-table form.
* :func:`across_criterion`: met when every expected architecture groks on every seed at the
  reference fraction; ``partial`` lists the expected (arch, fraction) groups not run yet.

Runs still training (``complete`` False; ``archcmp-analyze grokking --include-running``) count with
their curves so far: a group is ``decided`` once every seed grokked, once a seed generalised less
than the delay after memorising, or when all its runs are complete; a seed without a crossing yet
is censored at the step it has reached (``steps``), not "never".
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from archcmp.analysis.emergence.plots import ARCH_ORDER, arch_colors

STEP_COLS = ("train_reached_at", "val_reached_at", "delay_ratio")


def t_interval(values) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n): the 95% Student-t interval of the mean over the finite values."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan, 0
    if v.size == 1:
        return float(v[0]), np.nan, np.nan, 1
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half), int(v.size)


def _arch_key(arch: str) -> int:
    return ARCH_ORDER.index(arch) if arch in ARCH_ORDER else len(ARCH_ORDER)


def with_decay(table: pd.DataFrame) -> pd.DataFrame:
    """The runs trained with weight decay."""
    return table[table["weight_decay"] > 0]


def group_verdicts(table: pd.DataFrame, grok_delay: float = 5.0) -> pd.DataFrame:
    """One row per (arch, train_frac) of the weight-decay runs: counts, verdict and intervals."""
    rows = []
    for (arch, frac), g in with_decay(table).groupby(["arch", "train_frac"], sort=False):
        reached = np.isfinite(g["val_reached_at"].to_numpy(float))
        grokked = reached & (g["delay_ratio"].to_numpy(float) >= grok_delay)
        complete = bool(g["complete"].all()) if "complete" in g.columns else True
        # first crossings never move, so a group is settled once every seed grokked, once a seed
        # generalised too early, or when every run has finished
        too_early = reached & ~grokked
        row = {"arch": arch, "train_frac": float(frac), "n_seeds": len(g), "n_generalised": int(reached.sum()),
               "n_grokked": int(grokked.sum()), "groks_every_seed": bool(grokked.all()),
               "censored": bool(not reached.all()), "complete": complete,
               "decided": bool(grokked.all() or too_early.any() or complete), "steps": int(g["steps"].min()),
               "val_reached_at_per_seed": [None if np.isnan(x) else float(x) for x in g["val_reached_at"]]}
        for col in STEP_COLS:
            mean, lo, hi, _ = t_interval(g[col])
            if row["censored"] and col != "train_reached_at":
                lo = hi = np.nan
            row.update({col: mean, f"{col}_lo": lo, f"{col}_hi": hi})
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["train_frac", "arch"], key=lambda c: c.map(_arch_key) if c.name == "arch" else c,
                           ignore_index=True)


def compare_archs(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per fraction and pair (a, b): 'earlier' if a's t_val interval lies wholly below b's, 'later'
    if wholly above, else 'unresolved' (also when either interval is missing: censored or 1 seed)."""
    rows = []
    for frac, g in verdicts.groupby("train_frac"):
        for (_, a), (_, b) in itertools.combinations(g.iterrows(), 2):
            lo_a, hi_a, lo_b, hi_b = (a["val_reached_at_lo"], a["val_reached_at_hi"],
                                      b["val_reached_at_lo"], b["val_reached_at_hi"])
            if not np.all(np.isfinite([lo_a, hi_a, lo_b, hi_b])):
                verdict = "unresolved"
            elif hi_a < lo_b:
                verdict = "earlier"
            elif lo_a > hi_b:
                verdict = "later"
            else:
                verdict = "unresolved"
            rows.append({"train_frac": float(frac), "a": a["arch"], "b": b["arch"],
                         "t_val_a": a["val_reached_at"], "t_val_b": b["val_reached_at"], "a_vs_b": verdict})
    return pd.DataFrame(rows, columns=["train_frac", "a", "b", "t_val_a", "t_val_b", "a_vs_b"])


def fraction_slopes(table: pd.DataFrame, min_fractions: int = 3) -> pd.DataFrame:
    """Per architecture: slope of log10 t_val vs train fraction (least squares over every generalised
    seed) and its 95% t-interval (n - 2 degrees of freedom); needs ``min_fractions`` fractions with
    at least one generalised seed."""
    from scipy import stats

    rows = []
    for arch, g in with_decay(table).groupby("arch", sort=False):
        g = g[np.isfinite(g["val_reached_at"].to_numpy(float))]
        n_fracs = g["train_frac"].nunique()
        row = {"arch": arch, "n_fractions": int(n_fracs), "n_points": len(g),
               "slope": np.nan, "slope_lo": np.nan, "slope_hi": np.nan, "trend": "too few fractions"}
        if n_fracs >= min_fractions and len(g) > 2:
            fit = stats.linregress(g["train_frac"].to_numpy(float), np.log10(g["val_reached_at"].to_numpy(float)))
            half = stats.t.ppf(0.975, len(g) - 2) * fit.stderr
            lo, hi = fit.slope - half, fit.slope + half
            trend = "shrinks with more data" if hi < 0 else "grows with more data" if lo > 0 else "unresolved"
            row.update({"slope": float(fit.slope), "slope_lo": float(lo), "slope_hi": float(hi), "trend": trend})
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_fractions(table: pd.DataFrame) -> pd.DataFrame:
    """Claims seed table (condition, group, seed, metric, value): per arch and seed, the smallest
    swept fraction at which held-out accuracy passed the threshold (NaN: at none), and the step it
    did so at each fraction. ``group`` is the model size when the table has one, else 'all'."""
    rows = []
    d = with_decay(table)
    for (arch, seed), g in d.groupby(["arch", "seed"], sort=False):
        group = str(g["size"].iloc[0]) if "size" in g.columns else "all"
        hit = g[np.isfinite(g["val_reached_at"].to_numpy(float))]
        rows.append({"condition": arch, "group": group, "seed": int(seed), "metric": "threshold_task_fraction",
                     "value": float(hit["train_frac"].min()) if len(hit) else np.nan})
        for _, r in g.iterrows():
            rows.append({"condition": arch, "group": group, "seed": int(seed),
                         "metric": f"val_reached_at_f{r['train_frac']:g}", "value": r["val_reached_at"]})
    return pd.DataFrame(rows, columns=["condition", "group", "seed", "metric", "value"])


def across_criterion(verdicts: pd.DataFrame, reference_frac: float, archs=ARCH_ORDER,
                     fractions=None) -> dict:
    """Met: every arch in ``archs`` groks on every seed at ``reference_frac``. ``partial`` is True when
    an expected (arch, fraction) group is missing (``fractions``: the sweep's; default the reference)."""
    fractions = [reference_frac] if fractions is None else list(fractions)
    have = {(r["arch"], round(r["train_frac"], 6)) for _, r in verdicts.iterrows()}
    missing = [[a, float(f)] for f in fractions for a in archs if (a, round(float(f), 6)) not in have]
    ref = verdicts[np.isclose(verdicts["train_frac"], reference_frac)] if len(verdicts) else verdicts
    at_ref = {r["arch"]: bool(r["groks_every_seed"]) for _, r in ref.iterrows()}
    settled = {r["arch"]: bool(r["decided"]) for _, r in ref.iterrows()}
    met = all(at_ref.get(a, False) for a in archs)
    undecided = [a for a in archs if not settled.get(a, False)]
    groups = json_records(verdicts)
    return {"criterion": f"weight decay 1.0, train fraction {reference_frac:g}: every architecture "
                         f"({', '.join(archs)}) groks on every seed (train exact match >= 0.99 at t_train, "
                         "held-out >= 0.95 at t_val, t_val / t_train >= 5)",
            "met": bool(met), "decided": bool(met or not undecided or any(
                a in settled and settled[a] and not at_ref[a] for a in archs)),
            "undecided_archs": undecided,
            "n_seeds": int(ref["n_seeds"].min()) if len(ref) else 0,
            "groks_every_seed_at_reference": at_ref, "partial": bool(missing), "missing_groups": missing,
            "n_groups_expected": len(fractions) * len(archs),
            "n_groups_complete": int(verdicts["complete"].sum()) if len(verdicts) else 0,
            "groups": groups}


def json_records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain-JSON dicts (NaN -> None)."""
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and not np.isfinite(v) else
                        v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()})
    return out


def _archs_in(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["arch"].unique(), key=_arch_key)


def plot_heldout_by_arch(curves: pd.DataFrame, out, logx: bool = True):
    """One panel per architecture: held-out (solid) and train (dotted) exact match vs step, one
    colour per training fraction, one line per seed (weight-decay runs only)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    c = with_decay(curves)
    archs, fracs = _archs_in(c), sorted(c["train_frac"].unique())
    cmap = colormaps["viridis"]
    colour = {f: cmap(0.85 * i / max(len(fracs) - 1, 1)) for i, f in enumerate(fracs)}
    fig = Figure(figsize=(4.2 * len(archs), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharey=True, squeeze=False)[0])
    for ax, arch in zip(axes, archs):
        for (frac, seed), g in c[c["arch"] == arch].groupby(["train_frac", "seed"]):
            first = seed == c[(c["arch"] == arch) & (c["train_frac"] == frac)]["seed"].min()
            ax.plot(g["step"], g["val_acc"], color=colour[frac], alpha=0.85,
                    label=f"held out, f={frac:g}" if first else None)
            ax.plot(g["step"], g["train_acc"], color=colour[frac], alpha=0.5, ls=":")
        ax.axhline(0.95, color="grey", lw=0.6, ls="--")
        ax.set_title(f"{arch} (dotted: train)", fontsize=9)
        ax.set_xlabel("step")
        if logx:
            ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("exact match")
    fig.savefig(out, dpi=120)
    return fig


def plot_delay_vs_fraction(table: pd.DataFrame, verdicts: pd.DataFrame, out):
    """Left: steps to 95% held-out vs train fraction; right: delay ratio t_val / t_train. Seeds as
    dots, the mean with its 95% interval as error bars (censored groups: dots only, 'never' marked
    at the top of the axis)."""
    from matplotlib.figure import Figure

    d = with_decay(table)
    archs = _archs_in(d)
    colors = arch_colors(archs)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    offsets = {a: (i - (len(archs) - 1) / 2) * 0.006 for i, a in enumerate(archs)}
    top = float(d["steps"].max()) if len(d) else 1.0
    for ax, col, label in zip(axes, ("val_reached_at", "delay_ratio"),
                              ("steps to held-out exact match ≥ 0.95", "delay t_val / t_train")):
        for arch in archs:
            g, v = d[d["arch"] == arch], verdicts[verdicts["arch"] == arch]
            x = g["train_frac"].to_numpy(float) + offsets[arch]
            y = g[col].to_numpy(float)
            ax.scatter(x[np.isfinite(y)], y[np.isfinite(y)], s=12, color=colors[arch], alpha=0.6)
            if col == "val_reached_at":
                done = g["complete"].to_numpy(bool) if "complete" in g.columns else np.ones(len(g), bool)
                never, running = ~np.isfinite(y) & done, ~np.isfinite(y) & ~done
                ax.scatter(x[never], np.full(never.sum(), top), marker="x", s=25, color=colors[arch])
                # still training without a crossing: a lower bound, drawn at the step reached so far
                ax.scatter(x[running], g["steps"].to_numpy(float)[running], marker="^", s=25, color=colors[arch])
            ok = v[np.isfinite(v[f"{col}_lo"].to_numpy(float))]
            ax.errorbar(ok["train_frac"] + offsets[arch], ok[col],
                        yerr=[ok[col] - ok[f"{col}_lo"], ok[f"{col}_hi"] - ok[col]],
                        fmt="o-", color=colors[arch], capsize=3, ms=4, label=arch)
        ax.set_xlabel("training fraction of the pairs")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[1].axhline(5, color="grey", lw=0.6, ls="--")
    axes[0].set_title(f"× never within {top:,.0f} steps; ▲ not yet, still training (step reached); "
                      "bars: 95% interval over seeds", fontsize=8)
    axes[1].set_title("dashed: the 5× delay of the criterion", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.savefig(out, dpi=120)
    return fig
