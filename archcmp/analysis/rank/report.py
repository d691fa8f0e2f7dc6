"""Markdown report of the attention-rank probe (``table.md``): init -> trained table, per-step
tables, rank collapse at the last depth, the causal-softmax determinant demo and the cost line.

Inputs are the long DataFrames built by :mod:`archcmp.analysis.rank.cli` (``metrics.csv`` /
``collapse.csv`` rows) and its per-run info dicts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

RANK_KINDS = ("self", "prefix", "causal", "enc_self", "dec_self", "cross")
TABLE_METRICS = [  # (column, header, aggregation)
    ("n", "n", "mean"),
    ("numerical_rank_f32", "num. rank f32", "mean"),
    ("numerical_rank_f64", "num. rank f64", "mean"),
    ("effective_rank", "eff. rank", "mean"),
    ("effective_rank_frac", "eff. rank / n", "mean"),
    ("stable_rank", "stable rank", "mean"),
    ("log10_cond", "log10 cond (median)", "median"),
    ("abs_logdet_diff", "abs logdet gen-exact (median)", "median"),
    ("sign_mismatch", "slogdet sign ≠ +1", "mean"),
    ("full_rank_f32", "full rank f32", "mean"),
    ("full_rank_f64", "full rank f64", "mean"),
]


# ----------------------------------------------------------------------------- table
def _cell(a: float, b: float, fmt: str = ".3g") -> str:
    f = lambda x: "n/a" if x is None or not np.isfinite(x) else format(x, fmt)  # noqa: E731
    return f"{f(a)} → {f(b)}"


def _agg(g: pd.DataFrame, col: str, how: str) -> float:
    v = g[col].to_numpy(dtype=float)
    if col == "log10_cond":  # inf (exactly singular) counts as large, not dropped
        v = v[~np.isnan(v)]
    else:
        v = v[np.isfinite(v)]
    if not v.size:
        return np.nan
    return float(np.median(v) if how == "median" else v.mean())


def init_vs_trained_table(attn: pd.DataFrame, infos: list[dict]) -> str:
    final = {i["run"]: i["final_step"] for i in infos}
    head = ["arch", "size", "heads×dh", "attention", "matrices"] + [h for _, h, _ in TABLE_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {k: i for i, k in enumerate(RANK_KINDS)}
    keys = attn[["size", "arch", "heads_tag", "kind", "run"]].drop_duplicates()
    keys = keys.assign(o=keys["kind"].map(order)).sort_values(["size", "arch", "heads_tag", "o"])
    for _, k in keys.iterrows():
        g = attn[(attn["run"] == k["run"]) & (attn["kind"] == k["kind"])]
        g0, g1 = g[g["step"] == 0], g[g["step"] == final[k["run"]]]
        cells = [k["arch"], str(k["size"]), k["heads_tag"], k["kind"], str(len(g0))]
        for col, _, how in TABLE_METRICS:
            cells.append(_cell(_agg(g0, col, how), _agg(g1, col, how), ".0f" if col == "n" else ".3g"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_step_table(attn: pd.DataFrame, col: str, how: str = "mean") -> str:
    piv = attn.groupby(["label", "kind", "step"]).apply(lambda g: _agg(g, col, how), include_groups=False)
    piv = piv.unstack("step")
    steps = list(piv.columns)
    lines = ["| run | attention | " + " | ".join(f"step {s}" for s in steps) + " |", "|" + "---|" * (len(steps) + 2)]
    for (label, kind), row in piv.iterrows():
        lines.append(f"| {label} | {kind} | " + " | ".join("" if not np.isfinite(v) else f"{v:.3g}" for v in row) + " |")
    return "\n".join(lines)


def collapse_table(coll: pd.DataFrame, infos: list[dict]) -> str:
    final = {i["run"]: i["final_step"] for i in infos}
    from archcmp.analysis.common.capture import VARIANTS

    head = ["arch", "size", "heads×dh", "stack", "depth L"] + [f"{v}: init → trained" for v in VARIANTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (run, stack), g in coll.groupby(["run", "stack"], sort=False):
        L = int(g["layer"].max())
        last = g[g["layer"] == L]
        r = g.iloc[0]
        cells = [r["arch"], str(r["size"]), r["heads_tag"], stack, str(L)]
        for v in VARIANTS:
            a = last[(last["variant"] == v) & (last["step"] == 0)]["relative"].mean()
            b = last[(last["variant"] == v) & (last["step"] == final[run])]["relative"].mean()
            cells.append(_cell(a, b))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def demo_table() -> str:
    from archcmp.analysis.rank.plots import causal_softmax_demo_table

    d = causal_softmax_demo_table(seeds=range(4), causal=(True, False))
    d["sign_not_plus1"] = (d["slogdet_sign"] != 1).astype(float)
    cols = ["logdet_exact", "logdet_analytic", "logdet_generic", "sign_not_plus1", "log10_cond",
            "numerical_rank_f32", "numerical_rank_f64", "effective_rank", "min_diag"]
    g = d.groupby(["causal", "construction", "dtype"], sort=False)[cols].mean()
    lines = ["| mask | scores | softmax dtype | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for (causal, cons, dt), row in g.iterrows():
        lines.append(f"| {'causal' if causal else 'bidirectional'} | {cons} | {dt} | "
                     + " | ".join(f"{v:.4g}" for v in row) + " |")
    return ("Random Q, K ~ N(0,1), n=128, d=16, mean over seeds 0-3 "
            "(`archcmp.analysis.rank.plots.causal_softmax_demo`); `sign_not_plus1` = fraction of seeds whose "
            "numpy slogdet sign is not +1.\n\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- over seeds
def _ci(mean: float, lo: float, hi: float, n: int, fmt: str = ".3f") -> str:
    if not np.isfinite(mean):
        return "n/a"
    if n < 2 or not np.isfinite(lo):
        return f"{mean:{fmt}} ({n} seed)"
    return f"{mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["step"] == frame.groupby("run")["step"].transform("max")]


def _seed_values(g: pd.DataFrame, col: str, fmt: str = ".3f") -> str:
    return ", ".join(f"s{int(s)}: {v:{fmt}}" for s, v in zip(g["seed"], g[col]) if np.isfinite(v))


def rel_causal_table(checkpoints: pd.DataFrame) -> str:
    """Effective rank / uniform causal of the same n at init and at the final checkpoint, per
    size, arch, heads and kind: mean [95% t-interval over seeds]."""
    from archcmp.analysis.rank.quality import REL, over_seeds

    by = ["size", "arch", "heads_tag", "kind"]
    init = over_seeds(checkpoints[checkpoints["step"] == 0], REL, by).set_index(by)
    final = _final(checkpoints)
    fin = over_seeds(final, REL, by)
    order = {k: i for i, k in enumerate(RANK_KINDS)}
    fin = fin.assign(o=fin["kind"].map(order)).sort_values(["size", "arch", "heads_tag", "o"])
    lines = ["| size | arch | heads×dh | attention | mean n | seeds | init | final checkpoint | per seed (final) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in fin.iterrows():
        key = tuple(r[by])
        g = final[(final[by] == pd.Series(key, index=by)).all(axis=1)].sort_values("seed")
        i = init.loc[key] if key in init.index else None
        init_cell = "n/a" if i is None else _ci(i["mean"], i["lo"], i["hi"], int(i["n_seeds"]))
        lines.append(f"| {r['size']} | {r['arch']} | {r['heads_tag']} | {r['kind']} | {g['n'].mean():.1f} | "
                     f"{int(r['n_seeds'])} | {init_cell} | {_ci(r['mean'], r['lo'], r['hi'], int(r['n_seeds']))} | "
                     f"{_seed_values(g, REL)} |")
    return "\n".join(lines)


def contrast_table(contrast: pd.DataFrame) -> str:
    """Prefix-LM: prefix block, causal block and their difference at init and at the final
    checkpoint, per size: mean [95% t-interval over seeds]."""
    from archcmp.analysis.rank.quality import over_seeds

    if contrast.empty:
        return "(no prefix_lm run)"
    lines = ["| size | heads×dh | when | seeds | prefix block | causal block | causal − prefix | causal − prefix per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for (size, heads), g in contrast.groupby(["size", "heads_tag"], sort=True):
        for when, sel in (("init", g[g["step"] == 0]), ("final", _final(g))):
            cells = [over_seeds(sel.assign(k=0), c, ["k"]).iloc[0] for c in ("prefix", "causal", "causal_minus_prefix")]
            lines.append(f"| {size} | {heads} | {when} | {sel['seed'].nunique()} | "
                         + " | ".join(_ci(c["mean"], c["lo"], c["hi"], int(c["n_seeds"])) for c in cells)
                         + f" | {_seed_values(sel.sort_values('seed'), 'causal_minus_prefix')} |")
    return "\n".join(lines)


def quality_table(quality: pd.DataFrame) -> str:
    """Spearman (effective rank / uniform causal vs eval loss over checkpoints) per size, arch,
    heads and kind: per seed and mean [95% t-interval over seeds]."""
    from archcmp.analysis.rank.quality import over_seeds

    if quality.empty:
        return "(no run evaluated at its checkpoint steps)"
    by = ["size", "arch", "heads_tag", "kind"]
    s = over_seeds(quality, "spearman_rel_vs_eval_loss", by)
    lines = ["| size | arch | heads×dh | attention | checkpoints | seeds | Spearman ρ per seed | mean ρ [95% t over seeds] | "
             "rel. rank first → last ckpt (mean) | eval loss first → last (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        g = quality[(quality[by] == r[by]).all(axis=1)].sort_values("seed")
        lines.append(f"| {r['size']} | {r['arch']} | {r['heads_tag']} | {r['kind']} | {int(g['checkpoints'].median())} | "
                     f"{int(r['n_seeds'])} | {_seed_values(g, 'spearman_rel_vs_eval_loss', '.2f')} | "
                     f"{_ci(r['mean'], r['lo'], r['hi'], int(r['n_seeds']), '.2f')} | "
                     f"{g['rel_first'].mean():.3f} → {g['rel_last'].mean():.3f} | "
                     f"{g['eval_loss_first'].mean():.3f} → {g['eval_loss_last'].mean():.3f} |")
    return "\n".join(lines)


def quality_sections(frames: dict[str, pd.DataFrame] | None) -> list[str]:
    if not frames:
        return []
    return ["## Effective rank relative to the uniform causal matrix of the same n", "",
            "Effective rank divided by that of the n × n uniform causal matrix (row i = 1/i on its first i "
            "entries), so that the number does not move with n alone; mean over layers, heads and examples per "
            "run, then mean [95% t-interval] over seeds.", "",
            rel_causal_table(frames["checkpoints"]), "",
            "## Prefix-LM: causal block vs prefix block of the same matrices", "",
            "`prefix` = prefix × prefix (bidirectional, rows sum to 1); `causal` = target × target (causal), each "
            "row renormalised over the target keys. Both relative to the uniform causal matrix of their own n. "
            "Paired within each run (same model, same examples, only the mask differs).", "",
            contrast_table(frames["prefix_contrast"]), "",
            "## Rank vs eval loss across checkpoints", "",
            "Per run: Spearman ρ between the relative effective rank and the eval loss at the checkpoints where "
            "both were measured (figure `rank_vs_eval_loss.png`). ρ > 0: lower rank goes with lower loss. Both "
            "quantities trend with training step, so ρ measures co-movement over training, not a causal link; "
            "t-intervals over seeds of ρ can pass ±1.", "",
            quality_table(frames["rank_quality"]), ""]


def write_table(path: Path, attn, coll, infos, timing: dict, paths,
                frames: dict[str, pd.DataFrame] | None = None) -> str:
    runs = pd.DataFrame(infos)
    fps = runs.groupby("fingerprint")["run"].apply(list)
    lines = ["# Attention-rank probe", "",
             f"Command: `archcmp-analyze rank {' '.join(map(str, paths))}`  ",
             "Metrics of each example's own attention block (real tokens only) per layer and head, "
             "float64 SVD of the float32 probabilities captured with `return_attention=True`; "
             "numerical rank counts singular values > tol·σ_max with tol = n·eps_f32 (f32) or n·eps_f64 (f64); "
             "log10 cond = inf for an exactly zero σ_min (counted, not dropped; values above ~15.6 are "
             "not resolved by a float64 SVD); `abs logdet gen-exact` = |slogdet (LU) − Σ log diag| "
             "on lower-triangular (causal) blocks only. Step 0 = initialisation. "
             "`prefix` = the prefix × prefix sub-block of the prefix-LM's self-attention; `causal` = its target × "
             "target sub-block, rows renormalised over the target keys.", "",
             "## Runs", "",
             "| run | arch | size | heads×dh | params | eval loss (final) | steps analysed | examples |",
             "|---|---|---|---|---|---|---|---|"]
    for i in infos:
        el = i["eval_loss"]
        lines.append(f"| {i['run']} | {i['arch']} | {i['size']} | {i['heads_tag']} | {i['params']:,} | "
                     f"{'n/a' if el is None else f'{el:.4f}'} | {','.join(map(str, i['steps']))} | {i['examples']} |")
    lines += ["", f"Probe-batch data fingerprints: {len(fps)} distinct"
              + (" (identical examples for every run)" if len(fps) == 1 else f": {dict(fps)}"), "",
              "## Init → trained (final checkpoint), mean over layers, heads and examples", "",
              init_vs_trained_table(attn, infos), "",
              *quality_sections(frames),
              "## Effective rank / n through training", "", per_step_table(attn, "effective_rank_frac"), "",
              "## Median log10 condition number through training", "", per_step_table(attn, "log10_cond", "median"), "",
              "## Fraction numerically full rank (f32 tolerance) through training", "",
              per_step_table(attn, "full_rank_f32"), "",
              "## Rank collapse: relative residual ||X − 1xᵀ|| / ||X|| at the last depth", "",
              "Dong, Cordonnier & Loukas (2021) residual of the token representations of each example "
              f"(`{timing['norm']}` norm), mean over examples; depth 0 = embeddings. Variants "
              "(archcmp/analysis/common/capture.py): full = the model; attn_only = no MLP sub-layers; no_skip = "
              "sub-layers without residual connections; pure_attention = attention only, no skip (norms kept).",
              "", collapse_table(coll, infos), "",
              "## Causal softmax determinant demo", "", demo_table(), "",
              "## Cost", "",
              f"{timing['matrices']} attention matrices in {timing['metric_seconds']:.1f} s of metric time "
              f"({timing['matrices'] / max(timing['metric_seconds'], 1e-9):,.0f} matrices/s); "
              f"whole analysis {timing['seconds']:.1f} s for {len(infos)} runs "
              f"({timing['seconds'] / max(len(infos), 1):.1f} s per run, incl. compilation and restores).", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


