"""``archcmp-analyze seeds RESULTS_DIR``: per-seed evidence tables for the claims engine.

Reads the tables the probes already commit (``scaling/runs.csv``, ``scaling/ladder/runs.csv``,
``rank/metrics.csv.gz`` + ``rank/runs.csv``, ``emergence/metrics.csv`` + ``pl_check.csv``) and
writes, next to them, what :mod:`archcmp.claims` reads:

* ``seeds.csv`` (long format ``condition, group, seed, metric, value``): one number per seed,
  never pooled over seeds, so the claims engine's intervals are over seeds;
* ``scaling/fits.csv`` and ``scaling/ladder/fits.csv``: the L(C) exponent gamma and the L(N)
  exponent alpha_N per architecture, with interval, point count, seed count and the fitter's
  degeneracy flags. With >= 3 seeds each seed is fitted on its own and the interval is a t-interval
  over seeds; with fewer it is the bootstrap over runs of the pooled fit (shown, never decisive);
* ``scaling/extrapolation.csv``: the L(C) frontier fitted without its largest budget, the
  prediction for that budget with a bootstrap interval, and the observed frontier loss;
* ``scaling/ladder/extrapolation.csv`` (+ ``extrapolation.png``): per seed, the ladder's L(C)
  fitted without its largest size and that size's predicted and observed loss; the interval is
  the t-interval over seeds of predicted minus observed, paired by seed (C21);
* ``emergence/ladder3000_archs/seeds.csv``: the same per-seed emergence table over the decoder's
  3,000-step ladder (``emergence/ladder3000/``) and the other architectures' ladders of that recipe
  (``emergence/ladder3000_archs/<arch>/``), concatenated (C24 part 2, C25, C41);
* ``exposure/seeds.csv`` (+ ``gap.csv``, ``gap.png``): the emergence ladder's decoder scored
  teacher-forced and free-running on the same examples (C06, :mod:`.exposure`).

Seeds come from each run's ``seed`` column or its run name's ``-s<k>`` suffix.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.emergence import metrics as em
from archcmp.analysis.scaling import cli as scaling
from archcmp.analysis.scaling import fit as sf
from archcmp.analysis.seeds.exposure import SOURCE as EXPOSURE_SOURCE, export_exposure
from archcmp.analysis.rank.metrics import uniform_causal_erank
from archcmp.claims.evidence import FIT_COLUMNS, PREDICTION_COLUMNS, SEED_COLUMNS, mean_interval

FLOAT = "%.6g"
N_BOOT = 100
MIN_SEEDS_FOR_SEED_FITS = 3


def _write(df: pd.DataFrame, path: Path, columns) -> Path:
    df = df[list(columns)].sort_values(list(columns[:4]) if columns is SEED_COLUMNS else list(columns[:3]))
    df.to_csv(path, index=False, float_format=FLOAT, lineterminator="\n")
    return path


def seed_of(run_name: str) -> int:
    m = re.search(r"-s(\d+)$", str(run_name))
    if not m:
        raise ValueError(f"run name {run_name!r} carries no '-s<seed>' suffix")
    return int(m.group(1))


# ----------------------------------------------------------------------------- scaling
def _runs(path: Path) -> pd.DataFrame:
    d = pd.read_csv(path)
    d = d[d["status"] == "complete"].copy()
    if "seed" not in d or d["seed"].isna().any():
        d["seed"] = [seed_of(r) for r in d["run_name"]]
    d["seed"] = d["seed"].astype(int)
    return d


def isoflop_seed_table(d: pd.DataFrame) -> pd.DataFrame:
    """Best eval loss over sizes per (budget, arch, seed): the frontier loss of that budget."""
    g = d.groupby(["budget", "arch", "seed"], sort=True)["eval_loss"].min().reset_index()
    return pd.DataFrame({"condition": [f"C={b:.0e}" for b in g["budget"]], "group": g["arch"],
                         "seed": g["seed"], "metric": "frontier_loss", "value": g["eval_loss"]})


def ladder_seed_table(d: pd.DataFrame) -> pd.DataFrame:
    tpp = [m.group(1) if (m := re.search(r"tpp(\d+)", str(r))) else f"{v:.2g}"
           for r, v in zip(d["run_name"], d["D"] / d["N"])]
    return pd.DataFrame({"condition": [f"{s}/tpp{t}" for s, t in zip(d["size"], tpp)], "group": d["arch"],
                         "seed": d["seed"], "metric": "eval_loss", "value": d["eval_loss"]})


def _fit_rows(d: pd.DataFrame, arch: str, name: str, parameter: str, points, boot) -> dict:
    """One fit-table row: per-seed fits when there are enough seeds, else pooled + bootstrap."""
    seeds = sorted(d["seed"].unique())
    row = {"fit": name, "group": arch, "parameter": parameter, "n_seeds": len(seeds)}
    try:
        if len(seeds) >= MIN_SEEDS_FOR_SEED_FITS:
            fits = [sf.fit_power_law(*points(d[d["seed"] == s])) for s in seeds]
            est, lo, hi = mean_interval([f.alpha for f in fits])
            flags = sorted({f"seed {s}: {fl}" for s, f in zip(seeds, fits) for fl in f.flags})
            row.update(estimate=est, lo=lo, hi=hi, interval="t over seeds",
                       n_points=min(f.n_points for f in fits), flags="; ".join(flags))
        else:
            x, y = points(d)
            fit = sf.fit_power_law(x, y)
            ci = sf.percentile_ci(boot(d, fit), 0.95, N_BOOT // 2)
            row.update(estimate=fit.alpha, lo=ci[0, 2], hi=ci[1, 2],
                       interval=f"bootstrap over runs ({len(seeds)} seed)", n_points=fit.n_points,
                       flags="; ".join(fit.flags))
    except (ValueError, RuntimeError) as exc:
        row.update(estimate=np.nan, lo=np.nan, hi=np.nan, interval="none", n_points=0,
                   flags=f"not fitted: {exc}")
    return row


def _lc_points(g):
    return scaling.frontier(g)


def _ln_points(g):
    x, y, _ = scaling.ln_points(g)
    return x, y


def fit_table(d: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for arch in sorted(d["arch"].unique()):
        g = d[d["arch"] == arch]
        rows.append(_fit_rows(g, arch, "L(C)", "gamma", _lc_points,
                              lambda g, fit: scaling.bootstrap_frontier(g, n=N_BOOT, seed=0, point=fit)))
        rows.append(_fit_rows(g, arch, "L(N)", "alpha_N", _ln_points,
                              lambda g, fit: sf.bootstrap_power_law(*_ln_points(g), n=N_BOOT, seed=0, point=fit)))
    return pd.DataFrame(rows)


def extrapolation_table(d: pd.DataFrame) -> pd.DataFrame:
    """Hold out the largest budget of each architecture's L(C) frontier, predict it."""
    rows = []
    for arch in sorted(d["arch"].unique()):
        g = d[d["arch"] == arch]
        top = g["budget"].max()
        fit_runs, held = g[g["budget"] < top], g[g["budget"] == top]
        row = {"group": arch, "x_heldout": float(held["C"].min()),
               "observed": float(held["eval_loss"].min()), "n_seeds": int(g["seed"].nunique())}
        try:
            fc, fl = scaling.frontier(fit_runs)
            fit = sf.fit_power_law(fc, fl)
            bs = scaling.bootstrap_frontier(fit_runs, n=N_BOOT, seed=0, point=fit)
            preds = np.array([e + a * row["x_heldout"] ** -al if np.isfinite(al) else np.nan
                              for e, a, al in bs])
            lo, hi = sf.percentile_ci(preds[:, None], 0.95, N_BOOT // 2)[:, 0]
            row.update(predicted=float(fit.predict(row["x_heldout"])), lo=lo, hi=hi,
                       n_fit_points=fit.n_points, flags="; ".join(fit.flags))
        except (ValueError, RuntimeError) as exc:
            row.update(predicted=np.nan, lo=np.nan, hi=np.nan, n_fit_points=0, flags=f"not fitted: {exc}")
        rows.append(row)
    return pd.DataFrame(rows)


def ladder_holdout(g: pd.DataFrame) -> dict:
    """One architecture's ladder runs -> per seed, L(C) = E + A C^-gamma fitted to every size but
    the largest, and the largest size's predicted and observed loss (C21 on the ladder).

    Returns ``seeds``, ``predicted``, ``observed``, ``x_heldout`` (per seed), ``fits`` (per seed)
    and the runs used; raises ``ValueError`` when the runs hold no ladder (>= 3 sizes at one D/N).
    """
    runs, _ = scaling.ladder_runs(g)
    if runs is None:
        raise ValueError("no tokens-per-parameter ratio covers >= 3 sizes")
    top = runs["N"].max()
    out = {"runs": runs, "seeds": [], "predicted": [], "observed": [], "x_heldout": [], "fits": []}
    for s in sorted(runs["seed"].unique()):
        rs = runs[runs["seed"] == s]
        held, fit_runs = rs[rs["N"] == top], rs[rs["N"] < top]
        if held.empty:
            continue
        fit = sf.fit_power_law(fit_runs["C"].to_numpy(float), fit_runs["eval_loss"].to_numpy(float))
        x = float(held["C"].iloc[0])
        out["seeds"].append(int(s))
        out["fits"].append(fit)
        out["x_heldout"].append(x)
        out["predicted"].append(float(fit.predict(x)))
        out["observed"].append(float(held["eval_loss"].iloc[0]))
    return out


def ladder_extrapolation_table(d: pd.DataFrame) -> pd.DataFrame:
    """Per architecture: each seed's L(C) fit on the smaller sizes predicts the largest size; the
    interval is the 95% t-interval over seeds of (predicted - observed), paired by seed, placed
    around the mean observed loss. So ``lo <= observed <= hi`` exactly when that interval
    contains 0 (a single seed has no interval)."""
    rows = []
    for arch in sorted(d["arch"].unique()):
        row = {"group": arch}
        try:
            h = ladder_holdout(d[d["arch"] == arch])
            if not h["seeds"]:
                raise ValueError("no seed has the largest size")
        except (ValueError, RuntimeError) as exc:
            row.update(x_heldout=np.nan, observed=np.nan, predicted=np.nan, lo=np.nan, hi=np.nan,
                       n_seeds=0, n_fit_points=0, flags=f"not fitted: {exc}")
            rows.append(row)
            continue
        obs = float(np.mean(h["observed"]))
        m, lo, hi = mean_interval(np.subtract(h["predicted"], h["observed"]))
        flags = sorted({f"seed {s}: {fl}" for s, f in zip(h["seeds"], h["fits"]) for fl in f.flags})
        row.update(x_heldout=float(np.mean(h["x_heldout"])), observed=obs, predicted=obs + m,
                   lo=obs + lo, hi=obs + hi, n_seeds=len(h["seeds"]),
                   n_fit_points=min(f.n_points for f in h["fits"]), flags="; ".join(flags))
        rows.append(row)
    return pd.DataFrame(rows)


def plot_ladder_holdout(d: pd.DataFrame, path: Path) -> Path:
    """Per architecture: every seed's ladder points (loss vs training FLOPs), its fit on the
    smaller sizes extended to the held-out largest size, and the held-out observation."""
    from matplotlib.figure import Figure

    archs = sorted(d["arch"].unique())
    fig = Figure(figsize=(4.2 * len(archs), 3.6))
    axes = fig.subplots(1, len(archs), squeeze=False)[0]
    for ax, arch in zip(axes, archs):
        try:
            h = ladder_holdout(d[d["arch"] == arch])
        except (ValueError, RuntimeError) as exc:
            ax.set_title(f"{arch}: not fitted ({exc})", fontsize=8)
            continue
        runs = h["runs"]
        for i, (s, fit, x, p, o) in enumerate(zip(h["seeds"], h["fits"], h["x_heldout"], h["predicted"],
                                                  h["observed"])):
            rs = runs[runs["seed"] == s].sort_values("C")
            ax.plot(rs["C"], rs["eval_loss"], "o", color=f"C{i}", ms=4, label=f"seed {s}")
            xs = np.geomspace(rs["C"].min(), x, 50)
            ax.plot(xs, fit.predict(xs), "-", color=f"C{i}", lw=0.8, alpha=0.8)
            ax.plot([x], [p], "x", color=f"C{i}", ms=8)
            ax.plot([x], [o], "s", mfc="none", color=f"C{i}", ms=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel("eval loss (nats/char)")
        ax.set_title(f"{arch}: fit without the largest size\n(x predicted, square observed)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def export_scaling(folder: Path, *, ladder: bool) -> list[Path]:
    d = scaling.prepare(_runs(folder / "runs.csv"))
    seeds = ladder_seed_table(d) if ladder else isoflop_seed_table(d)
    extrapolation = ladder_extrapolation_table(d) if ladder else extrapolation_table(d)
    out = [_write(seeds, folder / "seeds.csv", SEED_COLUMNS),
           _write(fit_table(d), folder / "fits.csv", FIT_COLUMNS),
           _write(extrapolation, folder / "extrapolation.csv", PREDICTION_COLUMNS)]
    if ladder:
        out.append(plot_ladder_holdout(d, folder / "extrapolation.png"))
    return out


# ----------------------------------------------------------------------------- rank
def rank_seed_table(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Final-checkpoint effective rank per (size, arch/kind, seed) for default-head runs (square
    matrices only), and eval loss per (size/arch, h<heads>, seed) for every run."""
    runs = runs.copy()
    runs["seed"] = [seed_of(r) for r in runs["run"]]
    default_heads = runs.groupby("size")["n_heads"].agg(lambda s: s.mode().iloc[0])
    m = metrics[metrics["n"] == metrics["n_k"]].copy()
    m = m[m["step"] == m.groupby("run")["step"].transform("max")]
    m["rel_causal"] = m["effective_rank"] / m["n"].astype(int).map(uniform_causal_erank)
    m = m.merge(runs[["run", "seed"]], on="run")
    m = m[m["n_heads"] == m["size"].map(default_heads)]
    g = m.groupby(["size", "arch", "kind", "seed"], sort=True).agg(
        effective_rank_frac=("effective_rank_frac", "mean"), effective_rank_rel_causal=("rel_causal", "mean"))
    g = g.reset_index().melt(id_vars=["size", "arch", "kind", "seed"], var_name="metric")
    ranks = pd.DataFrame({"condition": g["size"], "group": g["arch"] + "/" + g["kind"], "seed": g["seed"],
                          "metric": g["metric"], "value": g["value"]})
    loss = pd.DataFrame({"condition": runs["size"] + "/" + runs["arch"], "group": "h" + runs["n_heads"].astype(str),
                         "seed": runs["seed"], "metric": "eval_loss", "value": runs["eval_loss"]})
    return pd.concat([ranks, loss], ignore_index=True)


def export_rank(folder: Path) -> list[Path]:
    metrics_path = folder / "metrics.csv.gz" if (folder / "metrics.csv.gz").exists() else folder / "metrics.csv"
    t = rank_seed_table(pd.read_csv(metrics_path), pd.read_csv(folder / "runs.csv"))
    return [_write(t, folder / "seeds.csv", SEED_COLUMNS)]


# ----------------------------------------------------------------------------- emergence
SMOOTHNESS_METRICS = ("exact_match", "token_accuracy", "edit_distance", "target_loglik")


def emergence_seed_table(metrics: pd.DataFrame, pl: pd.DataFrame) -> pd.DataFrame:
    """Final exact match per (size, arch, seed); breakthroughness across sizes per (arch,
    metric, seed); observed vs product-of-positions exact match per (arch/size, seed)."""
    m = metrics[metrics["step"] == metrics.groupby("run")["step"].transform("max")]
    em_rows = m[m["metric"] == "exact_match"]
    final = pd.DataFrame({"condition": em_rows["size"], "group": em_rows["arch"], "seed": em_rows["seed"],
                          "metric": "final_exact_match", "value": em_rows["mean"]})
    rows = []
    for (arch, metric, seed), g in m[m["metric"].isin(SMOOTHNESS_METRICS)].groupby(["arch", "metric", "seed"]):
        rows.append({"condition": arch, "group": metric, "seed": seed, "metric": "breakthroughness",
                     "value": em.breakthroughness(g["mean"].to_numpy(), g["params"].to_numpy())})
    p = pl[pl["step"] == pl.groupby("run")["step"].transform("max")]
    cond = p["arch"] + "/" + p["size"]
    obs = pd.DataFrame({"condition": cond, "group": "observed", "seed": p["seed"], "metric": "pl_exact_match",
                        "value": p["observed"]})
    pred = pd.DataFrame({"condition": cond, "group": "predicted_positional", "seed": p["seed"],
                         "metric": "pl_exact_match", "value": p["predicted_positional"]})
    return pd.concat([final, pd.DataFrame(rows), obs, pred], ignore_index=True)


def export_emergence(folder: Path) -> list[Path]:
    t = emergence_seed_table(pd.read_csv(folder / "metrics.csv"), pd.read_csv(folder / "pl_check.csv"))
    return [_write(t, folder / "seeds.csv", SEED_COLUMNS)]


ARCHS_BASE = Path("emergence") / "ladder3000"        # the decoder's ladder (its runs are not kept)
ARCHS_FOLDER = Path("emergence") / "ladder3000_archs"  # one sub-folder of probe tables per other arch


def export_emergence_archs(results: Path) -> list[Path]:
    """``ladder3000_archs/seeds.csv``: the decoder's committed ladder tables plus every
    ``ladder3000_archs/<arch>/`` probe output of the same recipe, as one per-seed table. Only a
    judged ladder enters (its folder has the ``--criterion`` output ``criterion.json``), so a partial
    probe of some sizes never feeds the claims."""
    folders = [results / ARCHS_BASE] + sorted(p.parent for p in (results / ARCHS_FOLDER).glob("*/metrics.csv")
                                              if (p.parent / "criterion.json").exists())
    metrics = [pd.read_csv(f / "metrics.csv") for f in folders]
    seen: dict[str, Path] = {}
    for f, m in zip(folders, metrics):
        for arch in m["arch"].unique():
            if arch in seen:
                raise ValueError(f"seeds: architecture {arch!r} appears in both {seen[arch]} and {f}")
            seen[arch] = f
    t = emergence_seed_table(pd.concat(metrics, ignore_index=True),
                             pd.concat([pd.read_csv(f / "pl_check.csv") for f in folders], ignore_index=True))
    return [_write(t, results / ARCHS_FOLDER / "seeds.csv", SEED_COLUMNS)]


# ----------------------------------------------------------------------------- CLI
def export_all(results: Path) -> list[Path]:
    """Every exporter whose inputs exist under ``results``."""
    out = []
    if (results / "scaling" / "runs.csv").exists():
        out += export_scaling(results / "scaling", ladder=False)
    if (results / "scaling" / "ladder" / "runs.csv").exists():
        out += export_scaling(results / "scaling" / "ladder", ladder=True)
    if (results / "rank" / "runs.csv").exists():
        out += export_rank(results / "rank")
    if (results / "emergence" / "metrics.csv").exists():
        out += export_emergence(results / "emergence")
    if (results / ARCHS_FOLDER).is_dir() and (results / ARCHS_BASE / "metrics.csv").exists():
        out += export_emergence_archs(results)
    if (results / EXPOSURE_SOURCE).exists():
        out += export_exposure(results)
    return out


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="archcmp-analyze seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="?", default=Path("experiments/results"),
                   help="results folder holding scaling/, rank/, emergence/ (default experiments/results)")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        print(f"seeds: results folder not found: {args.results}")
        return 2
    paths = export_all(args.results)
    if not paths:
        print(f"seeds: nothing to export under {args.results} (no scaling/, rank/ or emergence/ tables)")
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0
