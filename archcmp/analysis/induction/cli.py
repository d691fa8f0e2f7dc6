"""``archcmp-analyze induction PATH [PATH...]``: the induction-head phase change (Olsson et al. 2022).

For every run under the PATHs (trained on ``task=induction``: a random segment, then its repeat)
and every saved checkpoint, on the same fixed validation sequences (one per row, no packing).
Architectures that generate left to right are read: the decoder, the prefix LM (its prefix is
just BOS SEP with ``prompt='none'``) and the encoder-decoder (its decoder side; the encoder gets
no inputs). A mask-filling architecture (the encoder, trained with ``arch.objective=mlm`` on
``layout=pairs``) is read on masked answers instead (:func:`masked_answer_probe`): ``repeat`` =
one occurrence of a pair's answer masked, its other occurrences visible; ``first`` = every
occurrence of a pair's answer masked (nothing to copy); the head score is then
:func:`bidirectional_matching_scores`, written to the same ``prefix_matching`` column. Per run and
checkpoint:

* ``first_loss`` / ``repeat_loss``: mean next-token cross-entropy on the first occurrence of the
  segment (tokens 2..L, unpredictable: ln n_symbols at best) and on its repeat (tokens 2..L of the
  repeat, predictable from the context). The first token of each occurrence is left out (nothing
  earlier points at it). ``icl_score`` = repeat_loss - first_loss: loss late in the context minus
  loss early (negative = the context is used).
* per head: ``prefix_matching`` (:func:`prefix_matching_scores`), ``previous_token``
  (attention to the immediately preceding position) and ``copying`` (:func:`copying_scores`);
  and, for look-back distances d = 1..8, the best strided prefix-matching score (``stride``,
  ``strided_matching``: a second-layer head keyed on a first-layer head that reads d back) and the
  best fixed-offset attention (``lookback``, ``lookback_score``), so that a circuit built on a
  longer look-back than the previous token shows up instead of reading as "nothing formed".

Phase change (:func:`phase_change`): the repeat loss's 10%-to-90% drop window, measured from
ln(n_symbols) (the loss without context) to its last value; the step at which the
best last-layer head's prefix-matching score first reaches ``--pm-threshold`` (default 0.5).
The pre-set criterion (:func:`criterion`): on every seed the repeat loss falls by at least half of
ln(n_symbols), its 10-90% window is at most ``--max-window`` (default 0.5) of the step at which it
ends, and the prefix-matching step lies in that window (widened by one checkpoint interval).

Writes ``per_step.csv`` (loss metrics per run and step), ``heads.csv`` (per run, step, layer,
head), ``phase.csv``, ``criterion_measured.json``, ``table.md``, ``losses.png``, ``heads.png`` and
``head_maps.png`` (layer x head scores at the last checkpoint).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.emergence.plots import markdown_table
from archcmp.model.archs import arch_spec
from archcmp.analysis.common.cli import out_dir, probe_parser


# ----------------------------------------------------------------------------- head scores
STRIDES = tuple(range(1, 9))  # look-back distances scored per head (1: previous token / induction proper)


def _target_mass(attn: np.ndarray, match: np.ndarray, tokens: np.ndarray, valid: np.ndarray,
                 queries: np.ndarray | None, stride: int, allowed: np.ndarray) -> np.ndarray:
    """Mean attention mass from a query q on the keys k (``allowed`` [Tq, Tk]) whose token ``stride``
    back equals ``match[b, q]``, over the valid queries (in ``queries``) that have such a key. -> [H]"""
    attn, tokens, valid = np.asarray(attn, np.float64), np.asarray(tokens), np.asarray(valid, bool)
    B, H, T, _ = attn.shape
    k = np.arange(T)[None, :]
    prev = np.concatenate([np.full((B, stride), -1), tokens[:, :T - stride]], axis=1)  # token d before each key
    target = (prev[:, None, :] == np.asarray(match)[:, :, None]) & (k >= stride) & allowed  # [B, Tq, Tk]
    target &= valid[:, :, None] & valid[:, None, :]
    if queries is not None:
        target &= np.asarray(queries, bool)[:, :, None]
    has = target.any(-1)  # [B, Tq]
    mass = np.einsum("bhqk,bqk->bhq", attn, target.astype(np.float64))  # [B, H, Tq]
    n = has.sum()
    return (mass * has[:, None, :]).sum(axis=(0, 2)) / max(n, 1)


def prefix_matching_scores(attn: np.ndarray, tokens: np.ndarray, valid: np.ndarray,
                           queries: np.ndarray | None = None, stride: int = 1) -> np.ndarray:
    """Per-head prefix-matching score.  attn [B, H, T, T] (query, key), tokens [B, T], valid [B, T].

    For a query at position q, the *induction targets* are the earlier positions k <= q whose
    preceding token equals the query's token (tokens[k-1] == tokens[q], k-1 < q): where an
    induction head looks, so that it can copy tokens[k]. The score is the attention mass on those
    targets, averaged over the valid queries that have at least one (and, if ``queries`` [B, T] is
    given, are in it: the analysis passes the repeated segment, where copying pays, so chance
    repeats inside the first occurrence do not dilute it). A perfect induction head scores 1; a
    head attending uniformly scores about (#targets / #visible keys). -> [H]

    ``stride`` d > 1 scores the targets k with tokens[k-d] == tokens[q] instead: the key of a
    strided induction circuit, whose first-layer head reads d positions back rather than one (a
    segment at least d long can be completed that way too). d = 1 is the induction head proper.
    """
    T = np.shape(attn)[-1]
    earlier = np.arange(T)[None, :] <= np.arange(T)[:, None]  # k <= q
    return _target_mass(attn, tokens, tokens, valid, queries, stride, earlier)


def bidirectional_matching_scores(attn: np.ndarray, tokens: np.ndarray, valid: np.ndarray,
                                  queries: np.ndarray | None = None, stride: int = 1) -> np.ndarray:
    """Per-head prefix-matching score of a model that fills masks in place, both sides visible.
    attn [B, H, T, T] (query, key), tokens [B, T] (the model's inputs, MASK at the masked slots),
    valid [B, T], ``queries`` [B, T]: the masked slots scored (the analysis passes the answers that
    have a visible occurrence elsewhere).

    A masked slot p does not hold its own token; what says where to look is the token before it,
    its trigger T = tokens[p-1]. The *targets* are the other keys k != p, earlier **or later**,
    whose preceding token is T as well: the other occurrences' answers, the tokens to copy. The
    score is the attention mass on them, averaged over the queries that have at least one. A head
    reading the other answers scores 1, a head on the trigger itself ~0 (the token before the
    trigger is random), a uniform head about #targets / #keys. ``stride`` d > 1 matches the tokens
    d back on both sides (tokens[k-d] == tokens[p-d]). -> [H]
    """
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    before = np.concatenate([np.full((B, stride), -2), tokens[:, :T - stride]], axis=1)  # token d before each query
    others = ~np.eye(T, dtype=bool)  # k != p, either side
    return _target_mass(attn, before, tokens, valid, queries, stride, others)


def previous_token_scores(attn: np.ndarray, valid: np.ndarray, offset: int = 1) -> np.ndarray:
    """Per-head mean attention from each valid query (position >= ``offset``) to the position
    ``offset`` before it (1: the previous token). -> [H]"""
    attn, valid = np.asarray(attn, np.float64), np.asarray(valid, bool)
    diag = np.diagonal(attn, offset=-offset, axis1=2, axis2=3)  # [B, H, T-d]: query t+d -> key t
    keep = valid[:, offset:] & valid[:, :-offset]
    return (diag * keep[:, None, :]).sum(axis=(0, 2)) / max(keep.sum(), 1)


def copying_scores(ov: np.ndarray) -> np.ndarray:
    """Per-head copying score of OV circuits ``ov`` [H, N, N] (token -> logit, restricted to the
    task's N symbols): sum of the positive real parts of the eigenvalues over the sum of their
    absolute values (Elhage et al. 2021). Identity-like (copying) -> 1; a random matrix -> ~0. -> [H]"""
    out = []
    for m in np.asarray(ov, np.float64):
        ev = np.linalg.eigvals(m)
        out.append(float(np.clip(ev.real, 0, None).sum() / max(np.abs(ev).sum(), 1e-30)))
    return np.array(out)


def ov_circuits(params: dict, symbol_ids: np.ndarray, stack: str = "stack") -> np.ndarray:
    """OV circuits of every self-attention head of ``stack`` (``stack``: the single stack;
    ``decoder``: an encoder-decoder's decoder), ``E W_V W_O E^T`` on the symbols' embeddings
    (tied embeddings; norms left out). -> [L, H, N, N]"""
    emb = np.asarray(params["embed"]["table"])[symbol_ids]  # [N, D]
    qkv = np.asarray(params[stack]["blocks"]["self_attn"]["qkv"])  # [L, D, 3, H, K]
    out = np.asarray(params[stack]["blocks"]["self_attn"]["out"])  # [L, H, K, D]
    v = np.einsum("nd,ldhk->lhnk", emb, qkv[:, :, 2])
    return np.einsum("lhnk,lhkd,md->lhnm", v, out, emb)


# ----------------------------------------------------------------------------- curves
def drop_window(steps, loss, start: float | None = None) -> dict:
    """The 10%-90% window of a falling curve: the first steps at which ``loss`` has covered 10% and
    90% of its fall from ``start`` (default its first value) to its last value."""
    steps, loss = np.asarray(steps, float), np.asarray(loss, float)
    l0 = loss[0] if start is None else float(start)
    drop = l0 - loss[-1]
    if not drop > 0:
        return {"drop": float(drop), "t10": np.nan, "t90": np.nan, "window": np.nan}
    hit10 = np.flatnonzero(loss <= l0 - 0.1 * drop)
    hit90 = np.flatnonzero(loss <= l0 - 0.9 * drop)
    t10, t90 = float(steps[hit10[0]]), float(steps[hit90[0]])
    return {"drop": float(drop), "t10": t10, "t90": t90, "window": t90 - t10}


def first_reach(steps, values, threshold: float) -> float:
    hit = np.flatnonzero(np.asarray(values) >= threshold)
    return float(np.asarray(steps)[hit[0]]) if hit.size else np.nan


def phase_change(per_step: pd.DataFrame, heads: pd.DataFrame, pm_threshold: float = 0.5) -> pd.DataFrame:
    """Per run: the repeat-loss drop window and the step the best last-layer head's prefix-matching
    score first reaches ``pm_threshold``."""
    rows = []
    for run, g in per_step.groupby("run", sort=False):
        g = g.sort_values("step")
        # the fall is measured from ln(n_symbols), the loss of a model that ignores the context
        # (the first ~50 steps bring the loss down from the initial logits to that level)
        w = drop_window(g["step"], g["repeat_loss"], start=float(np.log(g["n_symbols"].iloc[0])))
        h = heads[(heads["run"] == run)]
        top = h[h["layer"] == h["layer"].max()]
        last = top.groupby("step")["prefix_matching"].max().sort_index()
        strided = (top.groupby("step")["strided_matching"].max().sort_index() if "strided_matching" in top
                   else last)
        interval = float(np.median(np.diff(g["step"]))) if len(g) > 1 else np.nan
        end = h[h["step"] == h["step"].max()]
        prev1 = end[end["layer"] == h["layer"].min()].get("previous_token", pd.Series(dtype=float))
        rows.append({"run": run, "arch": g["arch"].iloc[0], "seed": int(g["seed"].iloc[0]),
                     "n_symbols": int(g["n_symbols"].iloc[0]), **w, "interval": interval,
                     "pm_step": first_reach(last.index, last.values, pm_threshold),
                     "final_pm": float(last.iloc[-1]) if len(last) else np.nan,
                     "strided_step": first_reach(strided.index, strided.values, pm_threshold),
                     "final_strided": float(strided.iloc[-1]) if len(strided) else np.nan,
                     "max_pm": float(last.max()) if len(last) else np.nan,
                     "final_l1_previous_token": float(prev1.max()) if len(prev1) else np.nan,
                     "final_repeat_loss": float(g["repeat_loss"].iloc[-1]),
                     "final_first_loss": float(g["first_loss"].iloc[-1])})
    return pd.DataFrame(rows)


def criterion(phase: pd.DataFrame, max_window: float = 0.5) -> dict:
    """Every seed: the repeat loss falls by >= ln(n_symbols)/2, within a 10-90% window no longer
    than ``max_window`` x its end step, and the prefix-matching step lies in that window +- one
    checkpoint interval. ``met_strided``: the same with a last-layer head's best strided
    prefix-matching score (any look-back 1..8) in place of the stride-1 score."""
    per = []
    for _, r in phase.iterrows():
        big = bool(r["drop"] >= 0.5 * np.log(r["n_symbols"]))
        sharp = bool(np.isfinite(r["window"]) and r["window"] <= max_window * r["t90"])

        def inside(step):
            return bool(np.isfinite(step) and np.isfinite(r["t10"])
                        and r["t10"] - r["interval"] <= step <= r["t90"] + r["interval"])

        together = inside(r["pm_step"])
        strided = inside(r.get("strided_step", np.nan))
        per.append({"run": r["run"], "arch": r["arch"], "seed": int(r["seed"]), "drop": float(r["drop"]),
                    "t10": r["t10"], "t90": r["t90"], "pm_step": r["pm_step"],
                    "strided_step": r.get("strided_step", np.nan), "large_drop": big,
                    "sharp": sharp, "same_step_as_prefix_matching": together,
                    "same_step_as_strided_matching": strided, "met": big and sharp and together,
                    "met_strided": big and sharp and strided})
    return {"met": bool(per) and all(p["met"] for p in per),
            "met_strided": bool(per) and all(p["met_strided"] for p in per), "n_seeds": len(per), "runs": per}


# ----------------------------------------------------------------------------- per run
def masked_answer_probe(task, exs, seq_len: int, seed: int = 0):
    """The mask-filling probe of ``layout=pairs`` examples: (batch, first, repeat), [B, T] each.

    Each example is laid out as the MLM objective lays it out (``BOS SEP body EOS``, one row, no
    shift: a masked slot predicts its own token), with no other noise. Its pairs (found by
    :meth:`~archcmp.data.context_tasks.InductionTask.scored_targets`, grouped by trigger) get one of
    two roles, drawn per example from ``seed``: in half of them (rounded up) exactly one occurrence's
    answer becomes MASK, which one drawn at random so the visible copies are earlier, later or both
    (``repeat``: recoverable only by copying); in the others every occurrence's answer becomes MASK
    (``first``: nothing to copy, the baseline). Triggers and filler stay visible."""
    from archcmp.data import vocab

    if getattr(task, "layout", None) != "pairs":
        raise ValueError("induction: the masked-answer probe (mask-filling archs) reads task.params.layout=pairs")
    rng = np.random.default_rng(seed)
    B = len(exs)
    batch = {k: np.zeros((B, seq_len), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
    first = np.zeros((B, seq_len), bool)
    repeat = np.zeros_like(first)
    for i, ex in enumerate(exs):
        if len(ex.inputs):
            raise ValueError("induction: the masked-answer probe reads prompt='none' examples")
        row = np.concatenate([[vocab.BOS, vocab.SEP], ex.targets]).astype(np.int32)
        if row.size > seq_len:
            raise ValueError(f"induction: {row.size} tokens exceed task.seq_len={seq_len}")
        f, r = task.scored_targets(ex)
        answers = np.sort(np.concatenate([f, r])) + 2  # answer positions in the row
        by_trigger: dict[int, list[int]] = {}
        for a in answers:
            by_trigger.setdefault(int(row[a - 1]), []).append(int(a))
        groups = list(by_trigger.values())
        roles = rng.permutation(len(groups)) < (len(groups) + 1) // 2  # True: one answer masked
        for group, one in zip(groups, roles):
            masked = [group[rng.integers(len(group))]] if one else group
            (repeat if one else first)[i, masked] = True
        slots = first[i] | repeat[i]
        batch["targets"][i, :row.size] = np.where(slots[:row.size], row, 0)
        batch["inputs"][i, :row.size] = np.where(slots[:row.size], vocab.MASK, row)
        batch["segment_ids"][i, :row.size] = 1
        batch["positions"][i, :row.size] = np.arange(row.size)
    return batch, first, repeat


def probe_set(run, tasks, examples: int):
    """(batch, first-occurrence mask, repeat mask, symbol ids): ``examples`` validation sequences,
    one per row, in the run's own layout. The masks mark positions of the generating side's inputs
    (the single stack's, or an encoder-decoder's decoder side: ``BOS targets``, the encoder empty);
    for a mask-filling arch, the masked slots of :func:`masked_answer_probe`."""
    from archcmp.data import eval_batches

    tcfg = run.config["task"]
    params = dict(tcfg.get("params") or {})
    task = tasks.get(tcfg["name"], params)
    T = int(tcfg["seq_len"])
    batches, exs = eval_batches(task, "validation", run.arch, T, examples, examples, seed=0, packing=False)
    symbols = np.unique(np.concatenate([ex.targets[:-1] for ex in exs]))
    if arch_spec(run.arch).mask_fill:  # no left-to-right side: masked answers, scored in place
        return (*masked_answer_probe(task, exs, T), symbols, task)
    batch = batches[0]
    # decoder-side targets before the example's first target: SEP in a single stack's
    # BOS (x) SEP y, none in an encoder-decoder's BOS y[:-1]
    lead = 0 if arch_spec(run.arch).encoder_stack else 1
    first = np.zeros(batch["inputs"].shape, bool)
    repeat = np.zeros_like(first)
    for i, ex in enumerate(exs):
        if len(ex.inputs):  # prompt='first': BOS x(1..L) SEP x(L+2..2L+1) EOS
            if lead == 0:
                raise ValueError(f"induction: arch={run.arch!r} puts prompt='first' inputs in its encoder; "
                                 "the probe reads prompt='none'")
            n = len(ex.inputs)
            first[i, 1:n] = True  # the inputs x_1..x_{L-1} predict x_2..x_L
            repeat[i, n + 2:2 * n + 1] = True  # the same within the repeat
        else:  # prompt='none': BOS SEP targets EOS, target t at input position t + 2, predicted at t + 1
            t = ex.targets  # (encdec: BOS targets, target t predicted at position t)
            if not np.array_equal(batch["targets"][i, lead:lead + len(t)], t):
                raise ValueError(f"induction: arch={run.arch!r}: targets not at offset {lead} of the row")
            f, r = task.scored_targets(ex)
            first[i, f + lead] = True
            repeat[i, r + lead] = True
    return batch, first, repeat, symbols, task


def analyze_run(run, tasks, examples: int = 128) -> tuple[list[dict], list[dict]]:
    import jax
    from flax import nnx

    from archcmp.loading.run import restore_params, saved_steps
    from archcmp.model.models import build_model
    from archcmp.model.objectives import token_losses
    from archcmp.training.checkpoint import Checkpointer

    spec = arch_spec(run.arch)
    side = "dec_self" if spec.encoder_stack else "self"  # the generating side's self-attention
    # a mask-filling model predicts a slot from both sides: matched on the token before the slot
    matching = bidirectional_matching_scores if spec.mask_fill else prefix_matching_scores
    batch, first, repeat, symbols, task = probe_set(run, tasks, examples)
    model = build_model(run.model_cfg, int(run.summary.get("seed", 0)))
    graphdef, init_state = nnx.split(model)

    @jax.jit
    def forward(state, b):
        logits, extras = nnx.merge(graphdef, state)(b, return_attention=True)
        return token_losses(logits, b["targets"]), extras[side]

    mb = {k: v for k, v in batch.items() if k in ("inputs", "segment_ids", "positions", "targets", "prefix_mask",
                                                 "enc_inputs", "enc_segment_ids", "enc_positions")}
    valid = batch["segment_ids"] > 0
    steps = [0] + saved_steps(run)
    ck = Checkpointer(run.run_dir / "checkpoints", keep=None)
    base = {"run": run.name, "arch": run.arch, "seed": int(run.summary.get("seed", 0)),
            "n_symbols": int(getattr(task, "n_symbols", len(symbols)))}
    per_step, heads = [], []
    try:
        for step in steps:
            state = init_state if step == 0 else restore_params(ck, run, step, init_state)
            losses, attn = forward(state, mb)
            losses, attn = np.asarray(losses), np.asarray(attn)  # [B, T], [L, B, H, T, T]
            fl, rl = float(losses[first].mean()), float(losses[repeat].mean())
            per_step.append({**base, "step": step, "first_loss": fl, "repeat_loss": rl, "icl_score": rl - fl})
            cop = np.stack([copying_scores(c) for c in ov_circuits(nnx.to_pure_dict(state), symbols,
                                                                   "decoder" if spec.encoder_stack else "stack")])
            for layer in range(attn.shape[0]):
                strided = np.stack([matching(attn[layer], batch["inputs"], valid, queries=repeat, stride=d)
                                    for d in STRIDES])  # [S, H]
                back = np.stack([previous_token_scores(attn[layer], valid, d) for d in STRIDES])  # [S, H]
                for h in range(attn.shape[2]):
                    s, b = int(strided[:, h].argmax()), int(back[:, h].argmax())
                    heads.append({**base, "step": step, "layer": layer + 1, "head": h,
                                  "prefix_matching": strided[0, h], "previous_token": back[0, h],
                                  "copying": cop[layer, h], "stride": STRIDES[s], "strided_matching": strided[s, h],
                                  "lookback": STRIDES[b], "lookback_score": back[b, h]})
    finally:
        ck.close()
    return per_step, heads


# ----------------------------------------------------------------------------- figures
def plot_losses(per_step: pd.DataFrame, phase: pd.DataFrame, out: Path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for i, (run, g) in enumerate(per_step.groupby("run", sort=False)):
        g = g[g["step"] > 0]
        ax1.plot(g["step"], g["first_loss"], color=f"C{i}", ls="--", alpha=0.8, label=f"{run}: first occurrence")
        ax1.plot(g["step"], g["repeat_loss"], color=f"C{i}", alpha=0.9, label=f"{run}: repeat")
        ax2.plot(g["step"], g["icl_score"], color=f"C{i}", label=run)
        r = phase[phase["run"] == run]
        if len(r) and np.isfinite(r["t10"].iloc[0]):
            ax1.axvspan(r["t10"].iloc[0], r["t90"].iloc[0], color=f"C{i}", alpha=0.08)
        if len(r) and np.isfinite(r["pm_step"].iloc[0]):
            for ax in (ax1, ax2):
                ax.axvline(r["pm_step"].iloc[0], color=f"C{i}", ls=":", lw=1)
    ax1.set_ylabel("cross-entropy (nats/token)")
    ax1.set_title("first vs repeated occurrence (shaded: 10-90% drop; dotted: layer-2 prefix matching >= 0.5)",
                  fontsize=8)
    ax2.set_ylabel("repeat loss - first loss (nats)")
    ax2.set_title("in-context learning score", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=6)
    fig.savefig(out, dpi=120)


def plot_heads(heads: pd.DataFrame, out: Path):
    from matplotlib.figure import Figure

    runs = list(dict.fromkeys(heads["run"]))
    scores = tuple(c for c in ("prefix_matching", "strided_matching", "previous_token", "lookback_score", "copying")
                   if c in heads)
    fig = Figure(figsize=(4 * len(scores), 3.0 * len(runs)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(runs), len(scores), squeeze=False))
    for row, run in zip(axes, runs):
        g = heads[(heads["run"] == run) & (heads["step"] > 0)]
        for (layer, head), gh in g.groupby(["layer", "head"]):
            for ax, s in zip(row, scores):
                ax.plot(gh["step"], gh[s], ls="-" if layer == g["layer"].max() else ":", color=f"C{head}",
                        label=f"L{layer}H{head}")
        for ax, s in zip(row, scores):
            ax.set_title(f"{run}: {s.replace('_', ' ')}", fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=6, ncol=2)
    fig.savefig(out, dpi=110)


def plot_head_maps(heads: pd.DataFrame, out: Path, scores=("prefix_matching", "previous_token")):
    """Heatmaps (layer x head) of each run's head scores at its last checkpoint."""
    from matplotlib.figure import Figure

    runs = list(dict.fromkeys(heads["run"]))
    fig = Figure(figsize=(3.2 * len(scores), 1.6 + 1.2 * len(runs)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(runs), len(scores), squeeze=False))
    for row, run in zip(axes, runs):
        g = heads[heads["run"] == run]
        g = g[g["step"] == g["step"].max()]
        for ax, s in zip(row, scores):
            m = g.pivot(index="layer", columns="head", values=s).sort_index()  # [L, H]
            im = ax.imshow(m.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(m.values):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
            ax.set_xticks(range(m.shape[1]), [f"H{h}" for h in m.columns])
            ax.set_yticks(range(m.shape[0]), [f"L{l}" for l in m.index])
            ax.set_title(f"...{run[-12:]} step {int(g['step'].max())}:\n{s.replace('_', ' ')}", fontsize=7)
        fig.colorbar(im, ax=row[-1], shrink=0.8)
    fig.savefig(out, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = probe_parser("induction", __doc__)
    p.add_argument("--examples", type=int, default=128, help="validation sequences scored per checkpoint")
    p.add_argument("--pm-threshold", type=float, default=0.5, help="prefix-matching score that counts as formed")
    p.add_argument("--max-window", type=float, default=0.5, help="longest 10-90%% window, as a fraction of its end step")
    return p


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from archcmp.analysis.emergence.cli import locate_runs
    from archcmp.analysis.rank.cli import TaskCache
    from archcmp.loading.run import read_run
    from archcmp.distributed.hosts import quiet_libraries

    quiet_libraries()
    try:
        run_dirs = locate_runs(args.paths)
    except FileNotFoundError as err:
        print(f"induction: error: {err}", file=sys.stderr)
        return 2
    tasks, per_step, heads = TaskCache(), [], []
    for d in run_dirs:
        ps, hs = analyze_run(read_run(d), tasks, args.examples)
        per_step += ps
        heads += hs
        print(f"induction: {d.name}: {len(ps)} checkpoints", file=sys.stderr)
    per_step, heads = pd.DataFrame(per_step), pd.DataFrame(heads)
    out = out_dir(args, "induction")
    out.mkdir(parents=True, exist_ok=True)
    per_step.to_csv(out / "per_step.csv", index=False, float_format="%.6g")
    heads.to_csv(out / "heads.csv", index=False, float_format="%.6g")
    phase = phase_change(per_step, heads, args.pm_threshold)
    phase.to_csv(out / "phase.csv", index=False, float_format="%.6g")
    verdict = criterion(phase, args.max_window)
    (out / "criterion_measured.json").write_text(json.dumps(verdict, indent=1, default=float))
    plot_losses(per_step, phase, out / "losses.png")
    plot_heads(heads, out / "heads.png")
    plot_head_maps(heads, out / "head_maps.png")
    final = heads[heads["step"] == heads.groupby("run")["step"].transform("max")]
    text = ["# Induction heads", "", f"Command: `archcmp-analyze induction {' '.join(map(str, argv))}`", "",
            "## Phase change per run", "", markdown_table(phase, index=False, floatfmt=".4g"), "",
            "## Heads at the last checkpoint", "",
            markdown_table(final.drop(columns=["arch", "n_symbols"]), index=False, floatfmt=".3g"), "",
            f"Criterion met: **{verdict['met']}**", ""]
    (out / "table.md").write_text("\n".join(text))
    print(f"induction: {len(phase)} runs; criterion met: {verdict['met']}; wrote {out}/table.md")
    return 0
