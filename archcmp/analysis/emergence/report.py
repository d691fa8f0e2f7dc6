"""Outputs of the emergence probe: CSVs, ``table.md``, PNG figures and the optional wandb log."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.emergence import breakdown as bd
from archcmp.analysis.emergence import plots as ep
from archcmp.analysis.emergence.evaluate import EXTRA, METRICS, SHARP, SMOOTH
from archcmp.analysis.emergence.metrics import last_step, pl_summary

PANEL_METRICS = list(SHARP + SMOOTH)  # scaling.png: the sharp metric first, the smooth ones beside it


def _final(long_df: pd.DataFrame) -> pd.DataFrame:
    return last_step(long_df, ("arch", "params", "metric"))


def scale_table(long_df: pd.DataFrame, metrics=("exact_match", "token_accuracy", "edit_distance", "target_loglik",
                                              "brier", "tf_token_accuracy")) -> str:
    """Markdown: one row per (arch, size) at its final step, mean [95% CI] of each metric."""
    d = _final(long_df)
    d = d[d["metric"].isin(metrics)]
    rows = []
    keys = ["arch", "params"] + (["seed"] if "seed" in d.columns else [])  # one row per seed (num_seeds)
    for key, g in d.groupby(keys, sort=False):
        arch, params = key[:2]
        g = g.set_index("metric")
        row = {"arch": arch, "size": g["size"].iloc[0], "params": f"{int(params):,}", "step": int(g["step"].iloc[0])}
        if "seed" in d.columns:
            row["seed"] = int(key[2])
        for m in metrics:
            if m in g.index:
                r = g.loc[m]
                row[m] = f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
        rows.append(row)
    t = pd.DataFrame(rows)
    order = {a: i for i, a in enumerate(ep.ARCH_ORDER)}
    t = t.assign(_o=t["arch"].map(order), _p=t["params"].str.replace(",", "").astype(int))
    t = t.sort_values(["_o", "_p"]).drop(columns=["_o", "_p"])
    return ep.markdown_table(t, index=False)


def smoothness_md(smooth: pd.DataFrame) -> str:
    s = smooth[smooth["metric"].isin(PANEL_METRICS + list(EXTRA))].copy()
    s["arch"] = pd.Categorical(s["arch"], [a for a in ep.ARCH_ORDER if a in set(s["arch"])]
                               + sorted(set(s["arch"]) - set(ep.ARCH_ORDER)))
    s = s.sort_values(["arch", "metric"])
    return ep.markdown_table(s[["arch", "metric", "n_scales", "breakthroughness", "linearity_r2",
                                "linearity_increments"]], index=False)


def pl_md(pl: pd.DataFrame) -> str:
    d = last_step(pl, ("arch", "params")).copy()
    d = d.sort_values(["arch", "params"])
    d["params"] = d["params"].map(lambda v: f"{int(v):,}")
    cols = ["arch", "size", "params", "token_accuracy", "mean_len", "observed", "predicted_pooled",
            "predicted_positional"]
    return ep.markdown_table(d[[c for c in cols if c in d.columns]], index=False, floatfmt=".3f")


def by_length_md(examples: pd.DataFrame) -> str:
    """Exact match and per-token accuracy by answer length (tokens incl. EOS), final step, largest size."""
    d = examples[examples["step"] == examples.groupby("run")["step"].transform("max")]
    d = d[d["params"] == d.groupby("arch")["params"].transform("max")]
    g = d.groupby(["arch", "target_len"])[["exact_match", "token_accuracy"]].mean().reset_index()
    g["token_accuracy^L"] = g["token_accuracy"] ** g["target_len"]
    g["n"] = d.groupby(["arch", "target_len"]).size().to_numpy()
    return ep.markdown_table(g, index=False, floatfmt=".3f")


GROUP_METRICS = ("exact_match", "token_accuracy", "edit_distance", "target_loglik")
GROUPS = {"target_len": "answer length (tokens incl. EOS)", "operand_digits": "digits of the longer operand",
          "carries": "carries in the column addition"}


def group_tables(examples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``breakdown.by_group`` for every group column present (a column that is constant is skipped)."""
    out = {}
    for col in GROUPS:
        if col in examples.columns and examples[col].nunique() > 1:
            out[col] = bd.by_group(examples, col, [m for m in GROUP_METRICS if m in examples.columns])
    return out


def group_md(t: pd.DataFrame, col: str) -> str:
    """Markdown: one row per (arch, size, group value), mean over seeds [min, max]."""
    rows = []
    for _, r in t.sort_values(["arch", "params", col]).iterrows():
        row = {"arch": r["arch"], "size": r["size"], "params": f"{int(r['params']):,}", col: int(r[col]),
               "n/seed": int(r["n"])}
        for m in GROUP_METRICS:
            if m in t.columns:
                row[m] = f"{r[m]:.3f} [{r[m + '_min']:.3f}, {r[m + '_max']:.3f}]"
        rows.append(row)
    return ep.markdown_table(pd.DataFrame(rows), index=False)


def seed_smoothness_md(ss: pd.DataFrame) -> str:
    d = ss.copy()
    for c in ("B", "R2"):
        d[c] = [f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in zip(d[c], d[c + "_lo"], d[c + "_hi"])]
    if "gap" in d.columns:
        d["gap ‖B(exact)‖ − ‖B(metric)‖"] = ["" if pd.isna(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
                                         for v, lo, hi in zip(d["gap"], d["gap_lo"], d["gap_hi"])]
    cols = ["arch", "metric", "n_scales", "n_seeds", "B", "B_seeds", "R2"]
    cols += ["gap ‖B(exact)‖ − ‖B(metric)‖"] if "gap" in d.columns else []
    return ep.markdown_table(d[cols], index=False)


def write_table(path: Path, res: dict, args, argv) -> None:
    infos = pd.DataFrame(res["infos"])
    fps = infos["fingerprint"].nunique()
    runs = infos[["run", "arch", "size", "params", "train_steps", "steps", "examples", "status"]].copy()
    runs["params"] = runs["params"].map(lambda v: f"{int(v):,}")
    runs["steps"] = runs["steps"].map(lambda s: ",".join(map(str, s)))
    lines = [
        "# Emergence probe", "",
        f"Command: `archcmp-analyze emergence {' '.join(map(str, argv))}`  ",
        f"Decoding: `{args.strategy}` (causal architectures; the encoder fills one MASK slot per answer token"
        f"{'' if not args.refine_rounds else f' with {args.refine_rounds} refinement rounds'}); "
        f"{res['infos'][0]['examples']} `{args.split}` examples per run, "
        + ("identical for every run (one data fingerprint)." if fps == 1 else f"{fps} distinct example sets!"),
        "", "Answer tokens are the digits plus EOS. Means with 95% percentile-bootstrap CIs "
        f"({args.bootstrap} resamples). `edit_distance` and `brier` are lower-is-better; `target_loglik` is the "
        "teacher-forced sum of log p over the answer tokens; `tf_token_accuracy` is teacher-forced argmax "
        "accuracy (free-running `token_accuracy` below it = errors that cascade after a wrong token).", "",
        "## Runs", "", ep.markdown_table(runs, index=False), "",
        "## Metrics per architecture and size (final step)", "", scale_table(res["long"]), "",
        "## Smoothness across scale (final step per size)", "",
        "Breakthroughness B = sign(argmax y − argmin y)·(max y − min y)/√median((y_i − y_{i−1})²) over sizes in "
        "order of parameters (Srivastava et al. 2022, as written in Schaeffer et al. 2023, eq. 1); negative for "
        "improving lower-is-better metrics. `linearity_r2`: R² of y on log10(params); `linearity_increments`: "
        "(Σ Δy)²/((n−1)·Σ Δy²)-type straightness of the increments (1 = equal steps, 1/(n−1) = one jump). Both are "
        "stand-ins: BIG-bench's own linearity formula is not implemented (see the results README).", "",
        smoothness_md(res["smooth"]), "",
        "## Smoothness with intervals over seeds", "",
        "B and R² (vs log10 params) of the mean-over-seeds curve with 95% intervals from a bootstrap over seeds "
        "(each size's seeds resampled independently, the same resample for every metric); `B_seeds`: B of the curve "
        "through the k-th seed of every size; last column: the paired difference of |B| between exact match and "
        "the metric (> 0: exact match is the sharper one).", "",
        seed_smoothness_md(res["seed_smooth"]) if len(res.get("seed_smooth", [])) else "(no sweep across sizes)", "",
        "## p^L check: exact match predicted from per-token accuracy", "",
        "`predicted_pooled` = mean over examples of p^L (p = pooled per-token accuracy of the decoded answers, "
        "L = answer length); `predicted_positional` = mean of Π_j p_j with per-position accuracies.", "",
        pl_md(res["pl"]), "", ep.markdown_table(pl_summary(res["pl"]), index=False), "",
        "## By answer length (largest size, final step)", "", by_length_md(res["examples"]), "",
        *[line for col, t in res.get("groups", {}).items()
          for line in (f"## By {GROUPS[col]} (`{col}`), every size, final step", "",
                       "Mean over seeds [min, max over seeds].", "", group_md(t, col), "")],
        f"Analysis time: {res['seconds']:.1f} s for {len(infos)} runs.", ""]
    path.write_text("\n".join(lines))


def write_outputs(res: dict, out: Path, args, argv) -> dict[str, Path]:
    files = {}
    long_df = res["long"]
    for name, frame in (("metrics", long_df), ("smoothness", res["smooth"]), ("pl_check", res["pl"])):
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
        files[name] = out / f"{name}.csv"
    res["examples"].to_csv(out / "examples.csv.gz", index=False, float_format="%.6g")
    res["seed_smooth"] = bd.seed_smoothness(long_df, [m for m in METRICS if m in set(long_df["metric"])],
                                            n_boot=args.bootstrap)
    res["seed_smooth"].to_csv(out / "seed_smoothness.csv", index=False, float_format="%.6g")
    files["seed_smoothness"] = out / "seed_smoothness.csv"
    res["groups"] = group_tables(res["examples"])
    for col, t in res["groups"].items():
        t.to_csv(out / f"by_{col}.csv", index=False, float_format="%.6g")
        files[f"by_{col}_csv"] = out / f"by_{col}.csv"
    pd.DataFrame(res["infos"]).to_csv(out / "runs.csv", index=False)
    files["runs"] = out / "runs.csv"
    title = f"{args.strategy} decoding, {res['infos'][0]['examples']} {args.split} examples"
    figs = {"scaling": ep.plot_scaling_panels(long_df, PANEL_METRICS, out=out / "scaling.png", ncols=3,
                                              title=f"Sharp (exact match) vs smooth metrics of the same outputs: {title}"),
            "pl_check": ep.plot_pl_check(res["pl"], out=out / "pl_check.png", title="p^L check"),
            "sharp_vs_smooth": plot_sharp_vs_smooth(long_df, out / "sharp_vs_smooth.png")}
    for col, t in res["groups"].items():
        figs[f"by_{col}"] = plot_by_group(t, col, out / f"by_{col}.png")
    if res["seed_smooth"]["B"].notna().any():
        figs["breakthroughness"] = plot_breakthroughness(res["seed_smooth"], out / "breakthroughness.png")
    if long_df.groupby(["run"])["step"].nunique().max() > 1:
        figs["steps"] = plot_steps(long_df, out / "steps.png")
    for k in figs:
        files[k] = out / f"{k}.png"
    if getattr(args, "criterion", False):
        import json

        from archcmp.analysis.emergence.criterion import judge

        incomplete = [i["run"] for i in res["infos"] if i.get("status") != "complete"]
        verdict = judge(long_df, res["seed_smooth"], args.smallest_max, args.largest_min, incomplete)
        verdict["analysis_command"] = "archcmp-analyze emergence " + " ".join(map(str, argv))
        (out / "criterion.json").write_text(json.dumps(verdict, indent=1) + "\n")
        files["criterion"] = out / "criterion.json"
    write_table(out / "table.md", res, args, argv)
    files["table_md"] = out / "table.md"
    return files


def plot_sharp_vs_smooth(long_df: pd.DataFrame, out: Path):
    """One panel per architecture: exact match and per-token accuracy (and 1 − normalised edit
    distance is not drawn: it is a different unit) of the same outputs vs parameters."""
    from matplotlib.figure import Figure

    d = _final(long_df)
    archs = ep._archs(d["arch"])
    fig = Figure(figsize=(3.6 * len(archs), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharey=True))
    styles = {"exact_match": ("C3", "exact match (sharp)"), "token_accuracy": ("C0", "per-token accuracy"),
              "mean_token_prob": ("C2", "p(correct token), teacher-forced")}
    for ax, arch in zip(axes, archs):
        for metric, (color, label) in styles.items():
            g = d[(d["arch"] == arch) & (d["metric"] == metric)].sort_values("params")
            if g.empty:
                continue
            ax.plot(g["params"], g["mean"], "o-", ms=3, color=color, label=label)
            ax.fill_between(g["params"].to_numpy(float), g["lo"], g["hi"], color=color, alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_title(arch, fontsize=10)
        ax.set_xlabel("params")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(out, dpi=130)
    return fig


def plot_by_group(t: pd.DataFrame, col: str, out: Path, metrics=GROUP_METRICS):
    """One panel per metric: metric vs parameters, one line per group value (mean over seeds with
    the min..max band), one row of panels per architecture."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    archs = ep._archs(t["arch"])
    metrics = [m for m in metrics if m in t.columns]
    fig = Figure(figsize=(3.4 * len(metrics), 2.9 * len(archs)), layout="constrained")
    axes = np.asarray(fig.subplots(len(archs), len(metrics), squeeze=False))
    values = sorted(t[col].unique())
    cmap = colormaps["plasma"]
    for i, arch in enumerate(archs):
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            for k, v in enumerate(values):
                g = t[(t["arch"] == arch) & (t[col] == v)].sort_values("params")
                if g.empty:
                    continue
                c = cmap(k / max(len(values) - 1, 1) * 0.85)
                x = g["params"].to_numpy(float)
                ax.plot(x, g[m], "o-", ms=3, color=c, label=f"{col}={int(v)}")
                ax.fill_between(x, g[m + "_min"], g[m + "_max"], color=c, alpha=0.15, lw=0)
            ax.set_xscale("log")
            ax.set_title(f"{arch}: {m}" + (" (lower = better)" if m in ep.LOWER_IS_BETTER else ""), fontsize=9)
            ax.set_xlabel("params")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"Metrics by {GROUPS.get(col, col)} (mean over seeds, band = min..max)")
    fig.savefig(out, dpi=120)
    return fig


def plot_breakthroughness(ss: pd.DataFrame, out: Path, metrics=PANEL_METRICS):
    """|B| per metric (mean-over-seeds curve) with its seed-bootstrap 95% interval and the per-seed
    values, one panel per architecture; the sharp metric on top."""
    from matplotlib.figure import Figure

    archs = ep._archs(ss["arch"])
    fig = Figure(figsize=(4.2 * len(archs), 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharex=True))
    for ax, arch in zip(axes, archs):
        g = ss[(ss["arch"] == arch) & ss["metric"].isin(metrics)].set_index("metric")
        finite = np.abs(g[["B", "B_lo", "B_hi"]].to_numpy(float))
        cap = 1.5 * np.nanmax(np.where(np.isfinite(finite), finite, np.nan), initial=1.0)  # B = inf drawn here
        names = [m for m in metrics if m in g.index][::-1]
        for y, m in enumerate(names):
            r = g.loc[m]
            lo, hi = sorted(min(abs(r[c]), cap) for c in ("B_lo", "B_hi"))
            color = "C3" if m in SHARP else "C0"
            ax.plot([lo, hi], [y, y], color=color, lw=3, alpha=0.5)
            ax.plot(min(abs(r["B"]), cap), y, "o", color=color)
            seeds = [min(abs(float(v)), cap) for v in str(r["B_seeds"]).split(";") if v not in ("", "nan")]
            ax.plot(seeds, [y] * len(seeds), "x", color="k", ms=4)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("|breakthroughness|\n(dot: mean curve, bar: 95% over seeds, x: per seed)", fontsize=7)
        ax.set_title(arch, fontsize=10)
        ax.grid(alpha=0.3)
    fig.savefig(out, dpi=130)
    return fig


def plot_steps(long_df: pd.DataFrame, out: Path, metrics=("exact_match", "token_accuracy", "target_loglik")):
    """Metric vs training step, one panel per (metric, arch), one line per size."""
    from matplotlib.figure import Figure

    archs = ep._archs(long_df["arch"])
    fig = Figure(figsize=(3.4 * len(archs), 2.8 * len(metrics)), layout="constrained")
    axes = np.asarray(fig.subplots(len(metrics), len(archs), squeeze=False))
    # One colour per size name (the same in every panel), dark to light in order of parameters;
    # parameter counts differ slightly between architectures of one size, so key on the name.
    sizes = list(long_df.groupby("size")["params"].median().sort_values().index)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    colors = {size: cmap(k / max(len(sizes) - 1, 1) * 0.9) for k, size in enumerate(sizes)}
    for i, metric in enumerate(metrics):
        for j, arch in enumerate(archs):
            ax = axes[i, j]
            for size in sizes:
                g = long_df[(long_df["arch"] == arch) & (long_df["metric"] == metric) & (long_df["size"] == size)]
                if g.empty:
                    continue
                g = g.sort_values("step")
                ax.plot(g["step"], g["mean"], "o-", ms=2, color=colors[size], label=str(size))
            ax.set_title(f"{arch}: {metric}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    fig.savefig(out, dpi=120)
    return fig


def log_wandb(args, res: dict, files: dict[str, Path], out: Path) -> None:
    from archcmp.analysis.common.wandb_log import log_outputs

    summary = {}
    for _, r in res["smooth"].iterrows():
        summary[f"breakthroughness/{r['arch']}/{r['metric']}"] = r["breakthroughness"]
    final = _final(res["long"])
    for _, r in final[final["metric"].isin(METRICS)].iterrows():
        summary[f"{r['metric']}/{r['arch']}/{r['size']}"] = r["mean"]
    log_outputs(args, "emergence", out, files, summary=summary,
                config={"paths": [str(p) for p in args.paths], "examples": args.examples, "split": args.split,
                        "strategy": args.strategy, "steps": args.steps})
