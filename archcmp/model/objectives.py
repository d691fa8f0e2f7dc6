"""Losses. The data formatters (``archcmp.data.formatters``) lay each objective out as
``inputs / targets / weights``; here we only score them.

| objective        | arch            | what the formatter scores (``weights``)              |
|------------------|-----------------|------------------------------------------------------|
| causal LM        | decoder         | next token everywhere, or on the targets only        |
| prefix LM        | prefix_lm       | next token after the prefix (optionally the prefix)  |
| masked LM        | encoder         | the 15% chosen tokens (80% MASK / 10% random / 10% kept) |
| task / seq2seq   | encdec, encoder | the target tokens                                    |
| span corruption  | encdec          | the sentinel-delimited spans (T5)                    |

The common yardstick, ``eval_loss``, is the same for every architecture: cross-entropy on
the target tokens of the same held-out examples (``eval_weights``), in nats per target token.
Objective losses of different objectives are never compared with each other.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def token_losses(logits: Array, targets: Array) -> Array:
    """Per-position cross-entropy in nats.  logits [B,T,V] float32, targets [B,T] -> [B,T]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def weighted_sums(logits: Array, targets: Array, weights: Array) -> dict[str, Array]:
    """Sums that aggregate exactly across batches: loss, correct predictions, weight, and the
    log-probability of the correct token."""
    losses = token_losses(logits, targets)  # [B, T]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    w = weights.astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * w), "correct_sum": jnp.sum(correct * w), "weight_sum": jnp.sum(w)}


def mean_loss(logits: Array, targets: Array, weights: Array) -> tuple[Array, dict[str, Array]]:
    """Weighted mean cross-entropy (padding has weight 0) and its sums."""
    sums = weighted_sums(logits, targets, weights)
    return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums


def objective_loss(model, batch: Mapping[str, Array], dropout_key: Array | None = None):
    """Training loss of the batch's objective: mean cross-entropy over ``weights``."""
    logits = model(batch, dropout_key=dropout_key)
    return mean_loss(logits, batch["targets"], batch["weights"])


def eval_sums(model, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Yardstick sums on an evaluation batch: target-token cross-entropy and accuracy
    (``eval_*``) and the objective's own loss (``obj_*``) on the same logits."""
    logits = model(batch)
    target = weighted_sums(logits, batch["targets"], batch["eval_weights"])
    obj = weighted_sums(logits, batch["targets"], batch["weights"])
    out = {f"eval_{k}": v for k, v in target.items()}
    out.update({f"obj_{k}": v for k, v in obj.items()})
    out.update(answer_exact_sums(logits, batch))
    return out


def answer_exact_sums(logits: Array, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Answers whose every target token is the argmax, counted per packed example (segment).

    With the task layouts this equals exact match of greedy decoding (EOS included): a causal
    decoder that has produced a correct prefix sees exactly the teacher-forced context, and the
    encoder's single mask-filling pass reads the same MASK slots. -> ``eval_exact_sum`` (answers
    all correct) and ``eval_answer_count`` (answers scored), summed over the batch.
    """
    scored = batch["eval_weights"] > 0
    wrong = scored & (jnp.argmax(logits, axis=-1) != batch["targets"])
    seg = batch["segment_ids"]
    rows = jnp.arange(seg.shape[0])[:, None]
    per_seg = jnp.zeros((seg.shape[0], seg.shape[1] + 1), jnp.int32)
    has_answer = per_seg.at[rows, seg].max(scored.astype(jnp.int32))
    any_wrong = per_seg.at[rows, seg].max(wrong.astype(jnp.int32))
    return {"eval_exact_sum": jnp.sum(has_answer * (1 - any_wrong)).astype(jnp.float32),
            "eval_answer_count": jnp.sum(has_answer).astype(jnp.float32)}
