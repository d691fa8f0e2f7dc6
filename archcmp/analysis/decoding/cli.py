"""Sampling diversity, repetition and quality: sweep decoding settings on the same prompts.

    archcmp-analyze decoding RUNS_OR_SWEEP... [--prompts 16] [--samples 8] [--max-new 48] [--out DIR]
                             [--settings greedy,sample_T1] [--variant FORMAT] [--group FORMAT]

For every run of a causal architecture (decoder, prefix_lm, encdec; the encoder's mask filling has
no sampling temperature and is skipped with a note), the first ``--prompts`` validation examples of
the run's task are answered ``--samples`` times under each setting of :data:`SWEEP` (greedy, then
temperature, top-k, top-p and the CTRL repetition penalty, one knob at a time around T=1). Each
setting reports, over the same prompts:

  quality    exact match against the reference answer; mean log-likelihood per generated token
             under the model itself (teacher-forced on the sample)
  diversity  distinct-1/2 over all samples, per-prompt sample entropy (nats), self-overlap of
             2-grams among one prompt's samples (:mod:`archcmp.analysis.decoding.metrics`)
  repetition rep-2 / rep-4 of each long generation (share of repeated n-grams)

``--settings`` keeps a subset of the sweep. ``--variant`` labels runs that differ in something
other than architecture and size (a format string over the run's config, e.g. ``'{data_label}'``);
``--group`` names the evidence group (format fields: ``arch``, ``setting``, ``variant`` and the
run's config; default ``{arch}/{setting}``).

Outputs in ``--out``: ``per_run.csv``, ``summary.csv`` (mean and 95% interval over seeds per
size x group), ``seeds.csv`` (per-seed evidence for ``archcmp-claims``: condition = size,
group = ``--group``), ``table.md`` and ``frontier.png`` (quality vs distinct-2 per architecture and
variant, the Pareto frontier drawn).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.decoding.metrics import (distinct_n, pareto_front, rep_n, sample_entropy, self_overlap,
                                               strip)
from archcmp.model.archs import arch_spec
from archcmp.analysis.common.cli import out_dir, probe_parser

# (name, DecodeConfig fields): one knob at a time around plain sampling at T=1.
SWEEP = [
    ("greedy", dict(strategy="greedy")),
    ("sample_T0.5", dict(strategy="sample", temperature=0.5)),
    ("sample_T0.8", dict(strategy="sample", temperature=0.8)),
    ("sample_T1", dict(strategy="sample", temperature=1.0)),
    ("sample_T1.5", dict(strategy="sample", temperature=1.5)),
    ("sample_T1_topk5", dict(strategy="sample", temperature=1.0, top_k=5)),
    ("sample_T1_topk20", dict(strategy="sample", temperature=1.0, top_k=20)),
    ("sample_T1_topp0.5", dict(strategy="sample", temperature=1.0, top_p=0.5)),
    ("sample_T1_topp0.9", dict(strategy="sample", temperature=1.0, top_p=0.9)),
    ("sample_T1_rep1.3", dict(strategy="sample", temperature=1.0, repetition_penalty=1.3)),
    ("greedy_rep1.3", dict(strategy="greedy", repetition_penalty=1.3)),
    ("greedy_rep2", dict(strategy="greedy", repetition_penalty=2.0)),
]
METRICS = ("exact_match", "loglik", "distinct_1", "distinct_2", "sample_entropy", "self_overlap_2",
           "rep_2", "rep_4", "length")


def score_samples(prompts, references, samples, logliks, eos: int, pad: int) -> dict:
    """Metrics of one setting. ``samples[p]`` are the token rows of prompt p, ``logliks[p]`` their
    mean log-probability per token; ``references[p]`` the answer (EOS-terminated)."""
    cut = [[strip(s, eos, pad) for s in rows] for rows in samples]
    flat = [s for rows in cut for s in rows]
    refs = [strip(r, eos, pad) for r in references]
    out = {"exact_match": float(np.mean([s == r for rows, r in zip(cut, refs) for s in rows])),
           "loglik": float(np.mean([x for rows in logliks for x in rows])),
           "distinct_1": distinct_n(flat, 1), "distinct_2": distinct_n(flat, 2),
           "sample_entropy": float(np.mean([sample_entropy(rows) for rows in cut])),
           "self_overlap_2": float(np.nanmean([self_overlap(rows, 2) for rows in cut])),
           "length": float(np.mean([len(s) for s in flat]))}
    for n in (2, 4):
        reps = [rep_n(s, n) for s in flat if len(s) >= n]
        out[f"rep_{n}"] = float(np.mean(reps)) if reps else float("nan")
    return out


def evaluate_run(loaded, prompts: int, samples: int, max_new: int, seed: int = 0,
                 settings: list[str] | None = None) -> list[dict]:
    """One row per setting of :data:`SWEEP` (or the named subset ``settings``) for one run
    (``loaded``: :class:`archcmp.loading.loaded.Loaded`)."""
    import warnings

    import jax

    from archcmp.data import eval_examples, vocab
    from archcmp.data.example import Example
    from archcmp.decoding.generate import DecodeConfig, answer_logprobs, generate

    cfg, info = loaded.config, loaded.info
    tcfg = info["config"]["task"]
    base = {"run": info["run"], "arch": cfg.arch, "size": str(info["summary"].get("size", "?")),
            "seed": int(info["summary"].get("seed", 0)), "step": info["step"]}
    if arch_spec(cfg.arch).mask_fill:
        return [{**base, "setting": "-", "note": "encoder: mask filling has no sampling settings"}]
    exs = eval_examples(info["task"], "validation", int(tcfg["seq_len"]), prompts, seed=0)
    longest = max(len(ex.inputs) for ex in exs)
    if cfg.pos_encoding == "learned":  # a learned table ends at max_len: keep prompt + answer inside it
        max_new = max(1, min(max_new, cfg.max_len - longest - 3))
    samples_per_prompt = max(1, samples)
    rows = []
    for i, (name, knobs) in enumerate(SWEEP):
        if settings is not None and name not in settings:
            continue
        dcfg = DecodeConfig(max_new_tokens=max_new, **knobs)
        k = 1 if knobs["strategy"] == "greedy" else samples  # greedy samples would all be equal
        inputs = [ex.inputs for ex in exs for _ in range(k)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            toks = np.asarray(generate(loaded.model, inputs, dcfg, jax.random.key(1000 * seed + i)))
        answers = []
        for row in toks:
            kept = list(strip(row, vocab.EOS, vocab.PAD))
            ended = vocab.EOS in row.tolist()
            answers.append(np.asarray(kept + ([vocab.EOS] if ended or not kept else []), np.int32))
        # one scoring shape for every setting (longest prompt + longest answer incl. EOS; all
        # sampled rows), so the teacher-forced pass compiles once per model, not once per setting
        lps = answer_logprobs(loaded.model, [Example(x, y) for x, y in zip(inputs, answers)],
                              seq_len=longest + max_new + 3, rows=len(exs) * samples_per_prompt)
        per_prompt = lambda a: [a[p * k:(p + 1) * k] for p in range(len(exs))]  # noqa: E731
        m = score_samples(exs, [ex.targets for ex in exs], per_prompt(list(toks)),
                          per_prompt([float(lp.mean()) for lp in lps]), vocab.EOS, vocab.PAD)
        rows.append({**base, "setting": name, "samples": k, "max_new": max_new, **m, "note": ""})
    return rows


def label_rows(rows: list[dict], configs: dict[str, dict], variant: str, group: str) -> None:
    """Add ``variant`` and ``group`` (format strings over the row and its run's config) to each row."""
    from archcmp.analysis.seeds.sweep import label

    for r in rows:
        ctx = {**configs[r["run"]], "arch": r["arch"], "setting": r["setting"]}
        r["variant"] = label(variant, ctx, Path(r["run"])) if variant else ""
        r["group"] = label(group, {**ctx, "variant": r["variant"]}, Path(r["run"]))


def seed_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Long per-seed evidence (``archcmp-claims``): condition = size, group = the row's group
    (``arch/setting`` unless ``--group`` says otherwise)."""
    d = per_run[per_run["setting"] != "-"]
    if "group" not in d:
        d = d.assign(group=d["arch"] + "/" + d["setting"])
    long = d.melt(id_vars=["size", "group", "seed"], value_vars=list(METRICS), var_name="metric")
    return long.rename(columns={"size": "condition"})[["condition", "group", "seed", "metric", "value"]]


def summarize(per_run: pd.DataFrame) -> pd.DataFrame:
    from archcmp.analysis.common.probe_tables import t_interval

    order = {name: i for i, (name, _) in enumerate(SWEEP)}
    d = per_run[per_run["setting"] != "-"]
    if "variant" not in d:
        d = d.assign(variant="")
    rows = []
    for (size, variant, arch, setting), g in d.groupby(["size", "variant", "arch", "setting"]):
        row = {"size": size, "variant": variant, "arch": arch, "setting": setting}
        if "group" in g:
            row["group"] = g["group"].iloc[0]
        for metric in METRICS:
            row[metric], row[f"{metric}_ci95"], n = t_interval(g[metric])
        row["n_seeds"] = n
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["size", "variant", "arch", "setting"],
                           key=lambda c: c.map(order) if c.name == "setting" else c)


def plot_frontier(summary: pd.DataFrame, out: Path, quality: str = "loglik") -> None:
    from matplotlib.figure import Figure

    variants = summary["variant"] if "variant" in summary else pd.Series([""] * len(summary), index=summary.index)
    panels = list(dict.fromkeys(zip(variants, summary["arch"], summary["size"])))
    fig = Figure(figsize=(4.4 * len(panels), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (variant, arch, size) in zip(axes, panels):
        g = summary[(variants == variant) & (summary["arch"] == arch) & (summary["size"] == size)].reset_index(drop=True)
        ax.errorbar(g["distinct_2"], g[quality], xerr=g["distinct_2_ci95"].fillna(0),
                    yerr=g[f"{quality}_ci95"].fillna(0), fmt="o", ms=3, capsize=2, alpha=0.8)
        for _, r in g.iterrows():
            ax.annotate(r["setting"], (r["distinct_2"], r[quality]), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
        front = pareto_front(g["distinct_2"], g[quality])
        ax.plot(g.loc[front, "distinct_2"], g.loc[front, quality], "-", color="C3", lw=1, label="Pareto frontier")
        ax.set_xlabel("diversity: distinct-2")
        ax.set_title(f"{variant + ' ' if variant else ''}{arch} {size}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel({"loglik": "quality: log-likelihood per token (nats)"}.get(quality, quality))
    axes[0].legend(fontsize=7)
    fig.savefig(out, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = probe_parser("decoding", __doc__)
    p.add_argument("--prompts", type=int, default=16, help="validation prompts (the same for every setting)")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt for the sampling settings")
    p.add_argument("--max-new", type=int, default=48, help="longest generation (tokens)")
    p.add_argument("--quality", default="loglik", choices=["loglik", "exact_match"], help="y axis of the frontier")
    p.add_argument("--settings", default=None,
                   help=f"comma-separated subset of the sweep (default all: {','.join(n for n, _ in SWEEP)})")
    p.add_argument("--variant", default="", help="label of runs that differ beyond arch and size: a format "
                   "string over the run's config, e.g. '{data_label}'")
    p.add_argument("--group", default="{arch}/{setting}", help="evidence group: a format string over arch, "
                   "setting, variant and the run's config (default '{arch}/{setting}')")
    return p


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from archcmp.analysis.emergence.plots import markdown_table
    from archcmp.analysis.common.probe_tables import collect_rows, write_tables
    from archcmp.loading.run import load_run

    settings = None
    if args.settings:
        settings = [s.strip() for s in args.settings.split(",") if s.strip()]
        unknown = sorted(set(settings) - {n for n, _ in SWEEP})
        if unknown:
            print(f"decoding: error: --settings {args.settings!r}: unknown {unknown}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    configs: dict[str, dict] = {}

    def evaluate(d):
        loaded = load_run(d)
        configs[loaded.info["run"]] = dict(loaded.info["config"])
        return evaluate_run(loaded, args.prompts, args.samples, args.max_new, settings=settings)

    rows = collect_rows("decoding", args.paths, evaluate)
    if rows is None:
        return 2
    rows = [r for r in rows if r["setting"] != "-"] + [r for r in rows if r["setting"] == "-"]
    label_rows([r for r in rows if r["setting"] != "-"], configs, args.variant, args.group)
    per_run = pd.DataFrame(rows)
    summary = summarize(per_run)
    out = out_dir(args, "decoding")
    write_tables(out, per_run=per_run, summary=summary, seeds=seed_table(per_run))
    plot_frontier(summary, out / "frontier.png", args.quality)
    cols = ["size", *(["variant"] if args.variant else []), "arch", "setting", *METRICS, "n_seeds"]
    text = ["# Decoding: quality, diversity, repetition", "",
            f"Command: `archcmp-analyze decoding {' '.join(map(str, argv))}`", "",
            "Means over seeds (95% t half-widths in summary.csv).", "",
            markdown_table(summary[cols], index=False, floatfmt=".3g"), "",
            f"Wall time of the analysis: {time.perf_counter() - t0:.0f} s", ""]
    (out / "table.md").write_text("\n".join(text))
    print(f"decoding: {per_run['run'].nunique()} runs; wrote {out}/table.md")
    return 0
