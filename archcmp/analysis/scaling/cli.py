"""``archcmp-analyze scaling``: per-architecture scaling laws from a sweep.

Every fit uses ``eval_loss`` only -- the common yardstick scored on exactly the answer tokens,
identical across architectures -- and never the training-objective loss, which is a different
quantity per architecture (causal LM, prefix LM, MLM, span corruption) and so not comparable.
Only runs with ``status == "complete"`` are used.

Per architecture (fitters in :mod:`archcmp.analysis.scaling.fit`):

* approach 3, ``L(N, D) = E + A/N^alpha + B/D^beta`` (Hoffmann et al. 2022 / Besiroglu et al.
  2024 procedure) on (N, D = train_tokens, eval_loss), with bootstrap CIs;
* compute-optimal allocation under ``C = k N D`` where ``k`` is that architecture's measured
  ``flops_per_token / N`` (median over its runs): tokens per parameter and the loss reached at a
  few budgets common to all architectures ("equal compute");
* ``L(N) = E + A N^-alpha_N`` on the compute-frontier runs, or on a parameter ladder's runs of one
  tokens-per-parameter ratio (see :func:`ln_points`), with CI;
* the ``L(C)`` frontier: lower envelope of eval loss vs ``train_flops``, fitted ``E + A C^-gamma``,
  with a CI from resampling runs (:func:`bootstrap_frontier`).

Outputs (``--out``, default ``<first PATH>/analysis/scaling``): ``table.md``, ``runs.csv``,
``loss_vs_N.png``, ``loss_vs_D.png``, ``loss_vs_C.png``, ``isoflops.png``.
"""
from __future__ import annotations

import argparse
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.common.wandb_log import add_options, log_outputs

from archcmp.analysis.scaling import fit as sf
from archcmp.analysis.common.runs import WANDB_PREFIX, load_runs

log = logging.getLogger(__name__)
PARAM_COLUMNS = {"total": "params_total", "nonembedding": "params_nonembedding"}
CHIN_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass
class ArchResult:
    arch: str
    n_runs: int
    k: float
    chin: sf.ChinchillaFit | None = None
    chin_ci: dict = field(default_factory=dict)  # name -> (lo, hi)
    ln: sf.PowerLawFit | None = None
    ln_ci: dict = field(default_factory=dict)
    ln_on: str = ""  # which runs L(N) was fitted on
    lc: sf.PowerLawFit | None = None
    lc_ci: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def prepare(df: pd.DataFrame, params: str = "total") -> pd.DataFrame:
    """Complete runs with usable numbers, plus columns ``N`` (chosen parameter count),
    ``D`` (train_tokens), ``C`` (train_flops, or flops_per_token * D when absent), ``k``
    (flops_per_token / N) and ``budget`` (C rounded to one significant figure)."""
    if params not in PARAM_COLUMNS:
        raise ValueError(f"--params must be one of {sorted(PARAM_COLUMNS)}, got {params!r}")
    d = df[df["status"] == "complete"].copy()
    num = lambda c: pd.to_numeric(d[c], errors="coerce") if c in d else np.nan  # noqa: E731
    d["N"], d["D"], d["eval_loss"] = num(PARAM_COLUMNS[params]), num("train_tokens"), num("eval_loss")
    d["C"] = num("train_flops")
    d["C"] = d["C"].fillna(num("flops_per_token") * d["D"])
    d["k"] = num("flops_per_token") / d["N"]
    ok = (d[["N", "D", "eval_loss"]] > 0).all(axis=1) & np.isfinite(d[["N", "D", "eval_loss"]]).all(axis=1)
    if (~ok).any():
        warnings.warn(f"ignoring {(~ok).sum()} complete runs without positive N/D/eval_loss", stacklevel=2)
    d = d[ok & d["arch"].notna()].copy()
    d["budget"] = round_sig(d["C"].to_numpy(float))
    return d.reset_index(drop=True)


def round_sig(x, sig: int = 1) -> np.ndarray:
    """Round to ``sig`` significant figures (IsoFLOP budget detection: 2.9e15 -> 3e15)."""
    x = np.asarray(x, float)
    out = np.full_like(x, np.nan)
    ok = np.isfinite(x) & (x > 0)
    mag = 10.0 ** (np.floor(np.log10(x[ok])) - sig + 1)
    out[ok] = np.round(x[ok] / mag) * mag
    return out


def fit_arch(d: pd.DataFrame, arch: str, *, n_boot: int = 100, seed: int = 0,
             starts="hoffmann", level: float = 0.95) -> ArchResult:
    """All fits for one architecture; a fit that cannot be made becomes a note, not an error."""
    N, D, L, C = (d[c].to_numpy(float) for c in ("N", "D", "eval_loss", "C"))
    res = ArchResult(arch, len(d), sf.flops_per_param(d["flops_per_token"].astype(float), N)
                     if "flops_per_token" in d else 6.0)
    if not np.isfinite(d["k"]).any():
        res.notes.append("no flops_per_token: k = 6")
    try:
        res.chin = sf.fit_chinchilla(N, D, L, starts=starts)
        if n_boot > 0:
            bs = sf.bootstrap_chinchilla(N, D, L, n=n_boot, seed=seed, point=res.chin)
            res.chin_ci = dict(zip(CHIN_NAMES, sf.percentile_ci(bs, level, max(2, n_boot // 2)).T))
    except (ValueError, RuntimeError) as exc:
        res.notes.append(f"L(N,D) not fitted: {exc}")
    try:
        fn, fl, res.ln_on = ln_points(d)
        res.ln = sf.fit_power_law(fn, fl)
        if n_boot > 0:
            bs = sf.bootstrap_power_law(fn, fl, n=n_boot, seed=seed, point=res.ln)
            res.ln_ci = dict(zip(("E", "A", "alpha"), sf.percentile_ci(bs, level, max(2, n_boot // 2)).T))
    except (ValueError, RuntimeError) as exc:
        res.notes.append(f"L(N) not fitted: {exc}")
    try:
        fc, fl = frontier(d)
        res.lc = sf.fit_power_law(fc, fl)
        if n_boot > 0:
            bs = bootstrap_frontier(d, n=n_boot, seed=seed, point=res.lc)
            res.lc_ci = dict(zip(("E", "A", "alpha"), sf.percentile_ci(bs, level, max(2, n_boot // 2)).T))
    except (ValueError, RuntimeError) as exc:
        res.notes.append(f"L(C) not fitted: {exc}")
    for name, fit in (("L(N,D)", res.chin), ("L(N)", res.ln), ("L(C)", res.lc)):
        if fit is not None and fit.flags:
            res.notes.append(f"{name} flagged: " + "; ".join(fit.flags))
    for n in res.notes:
        warnings.warn(f"[{arch}] {n}", stacklevel=2)
    return res


def frontier(d: pd.DataFrame):
    """Compute frontier of one architecture's runs, grouped by IsoFLOP budget."""
    ok = np.isfinite(d["C"].to_numpy(float))
    budgets = d["budget"].to_numpy(float)[ok]
    return sf.compute_frontier(d["C"].to_numpy(float)[ok], d["eval_loss"].to_numpy(float)[ok],
                               decimals=None, groups=budgets)


def frontier_runs(d: pd.DataFrame):
    """(N, eval_loss) of the runs on the compute frontier, for the L(N) fit.

    Using the best run per model size instead would be wrong for IsoFLOP sweeps (the largest
    budget's big models are under-trained, so loss can *rise* with N). Along the compute-optimal
    path approach 3 gives ``L - E = A (1 + alpha/beta) N^-alpha``, so alpha_N fitted here is an
    independent estimate of approach 3's alpha; for a fixed-D sweep every run is on the frontier.
    """
    fc, fl = frontier(d)
    on = d[np.isin(d["C"].to_numpy(float), fc) & np.isin(d["eval_loss"].to_numpy(float), fl)]
    return on["N"].to_numpy(float), on["eval_loss"].to_numpy(float)


def ln_points(d: pd.DataFrame):
    """(N, eval_loss, description) for the L(N) fit.

    A parameter ladder (every size trained for the same tokens per parameter) gives L(N)
    directly: the runs of the largest ratio D/N that covers three or more sizes. Otherwise (an
    IsoFLOP sweep, where D/N differs from size to size) the compute-frontier runs
    (:func:`frontier_runs`).
    """
    g, r = ladder_runs(d)
    if g is not None:
        return g["N"].to_numpy(float), g["eval_loss"].to_numpy(float), f"runs at D/N ≈ {r:.2g}"
    fn, fl = frontier_runs(d)
    return fn, fl, "compute-frontier runs"


def ladder_runs(d: pd.DataFrame):
    """(runs, ratio): the runs of the largest tokens-per-parameter ratio D/N (one significant
    figure) that covers three or more sizes, or (None, nan) when no ratio does."""
    ratio = round_sig((d["D"] / d["N"]).to_numpy(float))
    for r in sorted(np.unique(ratio[np.isfinite(ratio)]), reverse=True):
        g = d[ratio == r]
        if g["N"].nunique() >= 3:
            return g, float(r)
    return None, float("nan")


def bootstrap_frontier(d: pd.DataFrame, *, n: int = 100, seed: int = 0, point: sf.PowerLawFit | None = None):
    """Bootstrap of the L(C) frontier fit: resample *runs*, rebuild the frontier, refit.
    Returns ``[n, 3]`` (E, A, gamma); resamples whose frontier has < 3 points are NaN."""
    rng = np.random.default_rng(seed)
    starts = None if point is None else np.vstack([sf.power_law_params(point), sf.POWER_LAW_GRID[::4]])
    out = np.full((n, 3), np.nan)
    for i in range(n):
        fc, fl = frontier(d.iloc[rng.integers(0, len(d), len(d))])
        try:
            f = sf.fit_power_law(fc, fl, starts=starts)
        except ValueError:
            continue
        out[i] = (f.E, f.A, f.alpha)
    return out


def default_budgets(C, n: int = 3) -> list[float]:
    """Up to ``n`` powers of ten spanning the observed compute (for equal-compute comparisons)."""
    C = np.asarray(C, float)
    C = C[np.isfinite(C) & (C > 0)]
    if not len(C):
        return [1e18]
    lo, hi = math.ceil(np.log10(C.min()) - 0.05), math.floor(np.log10(C.max()) + 0.05)
    exps = list(range(lo, hi + 1)) or [round(float(np.log10(np.median(C))))]
    if len(exps) > n:
        exps = [exps[int(round(i))] for i in np.linspace(0, len(exps) - 1, n)]
    return [10.0 ** e for e in exps]


# ----------------------------------------------------------------------------- table
def _f(v, fmt="{:.3g}"):
    return "—" if v is None or not np.isfinite(v) else fmt.format(v)


def _ci(v, ci, fmt="{:.3g}"):
    if v is None:
        return "—"
    has_ci = ci is not None and np.all(np.isfinite(ci))
    return _f(v, fmt) + (f" [{_f(ci[0], fmt)}, {_f(ci[1], fmt)}]" if has_ci else "")


def make_table(results: list[ArchResult], budgets, *, params: str, level: float = 0.95) -> pd.DataFrame:
    rows: dict[str, dict] = {}
    for r in results:
        c, col = r.chin, {}
        col["runs (complete)"] = str(r.n_runs)
        for name in ("alpha", "beta", "E", "A", "B"):
            col[f"{name} (L(N,D))"] = _ci(getattr(c, name) if c else None, r.chin_ci.get(name))
        col["k = FLOPs/token/N"] = _f(r.k, "{:.2f}")
        for b in budgets:
            n_opt, d_opt, l_opt = c.compute_optimal(b, r.k) if c else (None, None, None)
            col[f"tokens/param @ C={b:.0e}"] = _f(d_opt / n_opt if c else None)
            col[f"N_opt @ C={b:.0e}"] = _f(n_opt)
            col[f"D_opt @ C={b:.0e}"] = _f(d_opt)
            col[f"loss_opt @ C={b:.0e}"] = _f(l_opt, "{:.4f}")
        col["L(N) fitted on"] = f"{r.ln.n_points} {r.ln_on}" if r.ln else "—"
        col["alpha_N (L(N))"] = _ci(r.ln.alpha if r.ln else None, r.ln_ci.get("alpha"))
        col["E_N (L(N))"] = _ci(r.ln.E if r.ln else None, r.ln_ci.get("E"))
        col["gamma (L(C) frontier)"] = _ci(r.lc.alpha if r.lc else None, r.lc_ci.get("alpha"))
        col["notes"] = "; ".join(r.notes) or ""
        rows[r.arch] = col
    t = pd.DataFrame(rows)
    t.index.name = f"quantity (N = params_{params}, CI {int(level * 100)}%)"
    return t


def table_markdown(t: pd.DataFrame, n_boot: int) -> str:
    head = "| " + " | ".join([t.index.name] + list(t.columns)) + " |"
    lines = [head, "|" + "---|" * (len(t.columns) + 1)]
    lines += ["| " + " | ".join([str(i)] + [str(v).replace("|", "/") for v in t.loc[i]]) + " |"
              for i in t.index]
    foot = (f"\nFits on eval_loss only (complete runs). CIs: percentile bootstrap over runs, "
            f"{n_boot} resamples. loss_opt = loss at the compute-optimal (N, D) under C = k N D.\n")
    return "# Scaling laws per architecture\n\n" + "\n".join(lines) + "\n" + foot


# ----------------------------------------------------------------------------- plots
def _colors(archs):
    import matplotlib.pyplot as plt
    cyc = plt.get_cmap("tab10")
    return {a: cyc(i % 10) for i, a in enumerate(archs)}


def make_plots(d: pd.DataFrame, results: list[ArchResult], out: Path, params: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = _colors([r.arch for r in results])
    paths = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    for xcol, name, label in (("N", "loss_vs_N.png", f"parameters ({params})"),
                              ("D", "loss_vs_D.png", "training tokens D"),
                              ("C", "loss_vs_C.png", "training FLOPs C")):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for r in results:
            g = d[d["arch"] == r.arch]
            ax.scatter(g[xcol], g["eval_loss"], s=14, color=col[r.arch], alpha=0.6, label=r.arch)
            x = g[xcol].to_numpy(float)
            x = x[np.isfinite(x) & (x > 0)]
            if not len(x):
                continue
            grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 200)
            if xcol == "N":
                fn, fl, on = ln_points(g)
                ax.scatter(fn, fl, s=40, facecolors="none", edgecolors=col[r.arch])
                if r.ln:
                    ax.plot(grid, r.ln.predict(grid), color=col[r.arch],
                            label=f"{r.arch} L(N) on {on} (circled)")
            if xcol == "D" and r.chin:
                n_big = g["N"].max()
                ax.plot(grid, r.chin.predict(n_big, grid), color=col[r.arch],
                        label=f"{r.arch} L(N={n_big:.2g}, D)")
            if xcol == "C":
                fc, fl = frontier(g)
                ax.scatter(fc, fl, s=40, facecolors="none", edgecolors=col[r.arch])
                if r.lc:
                    ax.plot(grid, r.lc.predict(grid), color=col[r.arch], label=f"{r.arch} frontier")
                if r.chin:
                    ax.plot(grid, r.chin.compute_optimal(grid, r.k)[2], "--", color=col[r.arch],
                            label=f"{r.arch} L(N,D) optimum")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("eval loss")
        ax.legend(fontsize=7)
        save(fig, name)

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        g = d[d["arch"] == r.arch]
        budgets = sorted(g["budget"].dropna().unique())
        cmap = plt.get_cmap("viridis")
        for i, b in enumerate(budgets):
            gb = g[g["budget"] == b].sort_values("N")
            c = cmap(i / max(1, len(budgets) - 1))
            ax.plot(gb["N"], gb["eval_loss"], "o", color=c, label=f"{b:.0e}")
            if r.chin and len(gb) > 1:
                ns = np.geomspace(gb["N"].min() / 1.5, gb["N"].max() * 1.5, 100)
                ax.plot(ns, r.chin.predict(ns, b / (r.k * ns)), "-", color=c, lw=1)
                n_opt, _, l_opt = r.chin.compute_optimal(b, r.k)
                ax.plot([n_opt], [l_opt], "x", color=c, ms=8)
        ax.set_xscale("log")
        ax.set_title(f"{r.arch}: IsoFLOP (x = fitted optimum)")
        ax.set_xlabel(f"parameters ({params})")
        ax.set_ylabel("eval loss")
        ax.legend(fontsize=6, title="C", title_fontsize=7)
    save(fig, "isoflops.png")
    return paths


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archcmp-analyze scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="sweep directories (walked recursively) or wandb:entity/project")
    p.add_argument("--out", type=Path, help="output dir (default <first PATH>/analysis/scaling)")
    p.add_argument("--params", choices=sorted(PARAM_COLUMNS), default="total", help="which N to use")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")
    p.add_argument("--grid", choices=("hoffmann", "coarse"), default="hoffmann",
                   help="L-BFGS initialisation grid for the point fit (Hoffmann: 4500 starts)")
    p.add_argument("--budgets", type=lambda s: [float(v) for v in s.split(",")],
                   help="comma-separated FLOP budgets for the equal-compute rows")
    add_options(p)
    return p


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None:
        first = args.paths[0]
        if first.startswith(WANDB_PREFIX):
            print("scaling: --out is required when the first PATH is a wandb project")
            return 2
        args.out = Path(first) / "analysis" / "scaling"
    try:
        df = load_runs(args.paths)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"scaling: {exc}")
        return 2
    d = prepare(df, args.params) if len(df) else df
    if not len(d):
        print(f"scaling: no complete runs with eval_loss found under {', '.join(args.paths)} "
              f"({len(df)} run dirs with summary.json in total)")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    d.drop(columns=["eval_metrics"], errors="ignore").to_csv(args.out / "runs.csv", index=False)
    budgets = args.budgets or default_budgets(d["C"])
    results = [fit_arch(d[d["arch"] == a], a, n_boot=args.bootstrap, seed=args.seed,
                        starts=args.grid) for a in sorted(d["arch"].unique())]
    table = make_table(results, budgets, params=args.params)
    (args.out / "table.md").write_text(table_markdown(table, args.bootstrap))
    figures = make_plots(d, results, args.out, args.params)
    print(table_markdown(table, args.bootstrap))
    print(f"wrote {args.out}/table.md, runs.csv and {len(figures)} figures")
    if args.wandb:
        files = {"table": args.out / "fits.csv", "table_md": args.out / "table.md", "runs": args.out / "runs.csv",
                 **{p.stem: p for p in figures}}
        table.reset_index().astype(str).to_csv(files["table"], index=False)
        log_outputs(args, "scaling", args.out, files,
                    config={"paths": args.paths, "params": args.params, "bootstrap": args.bootstrap})
    return 0
