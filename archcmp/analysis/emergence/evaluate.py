"""One run of the emergence probe: restore each checkpoint, decode the fixed held-out examples,
score the *same* decoded outputs with sharp and smooth metrics, add teacher-forced scores.

For a checkpoint of a run (``evaluate_run``):

1. the examples are the first ``n`` fitting examples of the task's ``split`` in seed-0 order
   (:func:`archcmp.data.eval_examples`), so every architecture and size is scored on identical
   examples (their data fingerprint is reported);
2. the answers are generated with the run's own decoder (:func:`archcmp.decoding.generate.generate`):
   the causal architectures with the configured strategy (greedy by default), the encoder by
   mask filling of one MASK slot per target token (as it was trained) plus optional refinement;
3. per-example metrics (:func:`emergence_metrics.per_example_metrics`): exact match, per-token
   accuracy, token edit distance of the generated answer (EOS included, cut after the first EOS);
   teacher-forced target log-likelihood, mean probability of the correct token and Brier score
   from one forward pass over the task layout (the yardstick the trainer uses); plus the
   teacher-forced argmax accuracy (``tf_token_accuracy``) and exact match (``tf_exact_match``),
   which equals greedy exact match by construction — the gap between ``token_accuracy`` and
   ``tf_token_accuracy`` is the exposure-bias effect of free-running decoding (seed claim C06).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from archcmp.analysis.emergence import metrics as em
from archcmp.model.archs import arch_spec

SHARP = ("exact_match",)
SMOOTH = ("token_accuracy", "edit_distance", "target_loglik", "mean_token_prob", "brier")
EXTRA = ("tf_token_accuracy", "tf_exact_match")
METRICS = SHARP + SMOOTH + EXTRA


@dataclass
class ProbeSet:
    """The fixed held-out examples of one task, shared by every run with that task."""

    examples: list
    fingerprint: str
    seq_len: int
    features: pd.DataFrame | None = None  # per example: operand_digits, carries (breakdown.arithmetic_features)

    @property
    def targets(self) -> list[np.ndarray]:
        return [ex.targets for ex in self.examples]

    @property
    def max_target(self) -> int:
        return max(ex.targets.size for ex in self.examples)


def probe_set(run, split: str, n: int, tasks) -> ProbeSet:
    """First ``n`` examples of ``split`` (seed 0) that fit the run's ``task.seq_len``."""
    from archcmp.data import eval_examples, fingerprint

    tcfg = run.config["task"]
    task = tasks.get(run.summary.get("task") or tcfg["name"], dict(tcfg.get("params") or {}))
    T = int(tcfg["seq_len"])
    exs = eval_examples(task, split, T, n, seed=0)
    if not exs:
        raise ValueError(f"{run.run_dir}: no {split} example fits task.seq_len={T}")
    from archcmp.analysis.emergence.breakdown import arithmetic_features

    feats = None  # prompt features only where they mean something: column arithmetic "a<op>b="
    if getattr(task, "name", None) in ("addition", "multiplication"):
        feats = arithmetic_features([task.tokenizer.decode(ex.inputs) for ex in exs])
    return ProbeSet(exs, fingerprint(exs), T, feats)


def teacher_forced(model, probes: ProbeSet, chunk: int = 256) -> dict[str, np.ndarray]:
    """Teacher-forced scores aligned with the target tokens (column j = target token j).

    -> ``logp`` [N, L] log p(correct token), ``probs`` [N, L, V] full distributions (zeros past
    an example's length), ``argmax`` [N, L] the most likely token.
    """
    from flax import nnx

    from archcmp.data.formatters import make_formatter

    arch = model.cfg.arch
    fmt = make_formatter(arch, probes.seq_len, arch_spec(arch).encoder_len(probes.seq_len))
    graphdef, state = nnx.split(model)
    forward = _softmax_forward(graphdef)
    N, L, V = len(probes.examples), probes.max_target, model.cfg.vocab_size
    probs = np.zeros((N, L, V), np.float64)
    for start in range(0, N, chunk):
        exs = probes.examples[start:start + chunk]
        batch = fmt([[ex] for ex in exs], chunk)  # fixed batch shape: one compilation per model
        p = np.asarray(forward(state, batch), np.float64)
        for i, ex in enumerate(exs):
            pos = np.flatnonzero(batch["eval_weights"][i] > 0)  # positions predicting y_1..y_m, in order
            probs[start + i, :pos.size] = p[i, pos]
    tgt, lens = em.as_padded(probes.targets, pad_id=None)
    tgt = em._fit_width(tgt, L, 0)
    p_y = np.take_along_axis(probs, tgt[..., None], axis=2)[..., 0]
    valid = np.arange(L)[None] < lens[:, None]
    with np.errstate(divide="ignore"):
        logp = np.where(valid, np.log(p_y), 0.0)
    return {"logp": logp, "probs": probs, "argmax": probs.argmax(-1)}


@functools.lru_cache(maxsize=8)
def _softmax_forward(graphdef):
    """Jitted ``(state, batch) -> probabilities [B, T, V]``, compiled once per model graph."""
    import jax
    from flax import nnx

    return jax.jit(lambda st, b: jax.nn.softmax(nnx.merge(graphdef, st)(b), axis=-1))


def decode_answers(model, probes: ProbeSet, dcfg, rng_seed: int = 0) -> np.ndarray:
    """Generated answers [N, max_new] (PAD after EOS) with the run's own decoder."""
    import jax

    from archcmp.decoding.generate import generate

    lengths = [ex.targets.size for ex in probes.examples] if arch_spec(model.cfg.arch).mask_fill else None
    return np.asarray(generate(model, probes.examples, dcfg, jax.random.key(rng_seed), target_lengths=lengths))


def score(pred: np.ndarray, probes: ProbeSet, tf: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict]:
    """Per-example metrics of one checkpoint, and the token-correctness arrays for the p^L check."""
    from archcmp.data import vocab

    targets = probes.targets
    df = em.per_example_metrics(pred, targets, pad_id=vocab.PAD, eos_id=vocab.EOS, logp=tf["logp"],
                                probs=tf["probs"])
    correct, mask = em.token_correct(pred, targets, pad_id=vocab.PAD, eos_id=vocab.EOS)
    tf_correct, _ = em.token_correct(tf["argmax"], targets, target_lengths=[t.size for t in targets], pad_id=None)
    tf_correct &= mask
    n = mask.sum(1)
    df["tf_token_accuracy"] = tf_correct.sum(1) / np.maximum(n, 1)
    df["tf_exact_match"] = (tf_correct.sum(1) == n).astype(float)
    if probes.features is not None:
        for col in probes.features.columns:
            df[col] = probes.features[col].to_numpy()
    df.insert(0, "example", np.arange(len(df)))
    return df, {"correct": correct, "mask": mask, "exact": df["exact_match"].to_numpy()}


def evaluate_run(run, probes: ProbeSet, dcfg, steps: str = "final", rng_seed: int = 0) -> tuple[list[dict], dict]:
    """Score the run's checkpoints (``steps``: 'final', 'all' or comma-separated steps).

    -> (one record per step: ``step``, ``frame`` (per-example metrics), ``pl`` (p^L inputs),
    ``seconds``), info dict. Raises if the run has no checkpoint.
    """
    from flax import nnx

    from archcmp.loading.run import restore_params, saved_steps
    from archcmp.training.checkpoint import Checkpointer
    from archcmp.model.models import build_model

    saved = saved_steps(run)
    if not saved:
        raise FileNotFoundError(f"{run.run_dir}/checkpoints: no checkpoint to restore")
    if steps == "final":
        wanted = [saved[-1]]
    elif steps == "all":
        wanted = saved
    else:
        keep = {int(s) for s in steps.split(",")}
        wanted = [s for s in saved if s in keep]
        if not wanted:
            raise ValueError(f"--steps={steps}: none of these is a saved step of {run.run_dir} (saved: {saved})")
    graphdef, init_state = nnx.split(build_model(run.model_cfg, int(run.summary.get("seed", 0))))
    records = []
    ck = Checkpointer(run.run_dir / "checkpoints", keep=None)
    try:
        for step in wanted:
            t0 = time.perf_counter()
            model = nnx.merge(graphdef, restore_params(ck, run, step, init_state))
            pred = decode_answers(model, probes, dcfg, rng_seed)
            frame, pl = score(pred, probes, teacher_forced(model, probes))
            records.append({"step": step, "frame": frame, "pl": pl, "seconds": time.perf_counter() - t0})
    finally:
        ck.close()
    return records, {"saved_steps": saved, "steps": wanted}


def run_keys(run) -> dict[str, Any]:
    """Identifying columns of a run in every output table."""
    return {"run": run.name, "arch": run.arch, "size": run.summary.get("size"),
            "params": int(run.summary.get("params_total") or 0), "seed": run.summary.get("seed")}
