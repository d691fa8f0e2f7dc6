"""Write ``criterion.json`` for one induction result directory from the analysis's own files.

``archcmp-analyze induction`` writes ``phase.csv`` (one row per seed) and ``criterion_measured.json``
(the verdict per seed). This script puts the verdict next to the numbers it rests on, with means
and 95% t-intervals over seeds, in the layout of the decoder's ``criterion.json`` one level up.
Nothing is re-scored: every number is read from those two files.

    python experiments/results/induction/criterion_summary.py DIR --recipe "..." \
        --train-wall 601 --analysis-wall 58 [--t90-band 1680 2520] [--partial "..."]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from archcmp.analysis.common.probe_tables import t_interval

CRITERION = ("on every seed: repeat loss (2nd/3rd answers of trigger->answer pairs, layout=pairs) falls "
             ">= ln(64)/2 = 2.08 nats below ln(64); its 10-90% window <= 0.5 x the step it ends; a layer-2 "
             "head's prefix-matching score (stride 1) first reaches 0.5 inside that window (+- one checkpoint "
             "interval, 100 steps). Pre-registered in the fourth pass, reused unchanged.")


def _r(x, nd=3):
    x = float(x)
    return None if not math.isfinite(x) else round(x, nd)


def _ci(values) -> list:
    m, half, n = t_interval(values)
    return [_r(m), _r(m - half), _r(m + half)] if n > 1 else [_r(m), None, None]


def summary(d: Path, recipe: str, train_wall, analysis_wall, band=None, partial=None) -> dict:
    phase = pd.read_csv(d / "phase.csv").sort_values("seed")
    measured = json.loads((d / "criterion_measured.json").read_text())
    verdict = {r["seed"]: r for r in measured["runs"]}
    seeds = [int(s) for s in phase["seed"]]
    out = {"criterion": CRITERION, "met": bool(measured["met"]), "n_seeds": len(seeds), "seeds": seeds,
           "arch": sorted(set(phase["arch"])), "recipe": recipe}
    if partial:
        out["partial"] = partial
    last = pd.read_csv(d / "per_step.csv").groupby("seed")["step"].max()
    out["last_step_per_seed"] = [int(last[s]) for s in seeds]
    cols = {"drop_below_ln64_per_seed": "drop", "t10_per_seed": "t10", "t90_per_seed": "t90",
            "window_per_seed": "window", "prefix_matching_step_per_seed": "pm_step",
            "repeat_loss_final_per_seed": "final_repeat_loss", "first_loss_final_per_seed": "final_first_loss",
            "max_layer2_prefix_matching_per_seed": "max_pm",
            "final_layer1_previous_token_per_seed": "final_l1_previous_token"}
    for key, col in cols.items():
        out[key] = [_r(v) for v in phase[col]]
    out["window_over_t90_per_seed"] = [_r(w / t) if t else None for w, t in zip(phase["window"], phase["t90"])]
    out["prefix_matching_step_mean_ci95"] = _ci(phase["pm_step"])
    out["t90_mean_ci95"] = _ci(phase["t90"])
    out["drop_mean_ci95"] = _ci(phase["drop"])
    for key in ("large_drop", "sharp", "same_step_as_prefix_matching"):
        out[key] = [bool(verdict[s][key]) for s in seeds]
    out["met_per_seed"] = [bool(verdict[s]["met"]) for s in seeds]
    if band is not None:
        lo, hi = band
        inside = [bool(lo <= t <= hi) for t in phase["t90"]]
        out["prediction"] = {"rule": f"matches the decoder if met on every seed and every t90 in [{lo}, {hi}] "
                                     "(the decoder's t90 range +- 20%)",
                             "t90_in_band_per_seed": inside, "matches": bool(out["met"] and all(inside))}
    out["train_wall_seconds_total"] = train_wall
    out["analysis_wall_seconds"] = analysis_wall
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--recipe", required=True)
    p.add_argument("--train-wall", type=float, default=None)
    p.add_argument("--analysis-wall", type=float, default=None)
    p.add_argument("--t90-band", type=float, nargs=2, default=None)
    p.add_argument("--partial", default=None)
    a = p.parse_args(argv)
    out = summary(a.dir, a.recipe, a.train_wall, a.analysis_wall, a.t90_band, a.partial)
    (a.dir / "criterion.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("met", "met_per_seed", "t90_per_seed", "prefix_matching_step_per_seed")}))


if __name__ == "__main__":
    main()
