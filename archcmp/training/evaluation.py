"""The evaluation yardstick of a run: which held-out batches are scored, and what the scores mean.

Every architecture and seed is scored on the same held-out examples (the task's validation split,
first ``train.eval_examples`` that fit), in two layouts: the *task* layout (the answer tokens only,
comparable across architectures) and the run's own *objective* layout (MLM, span corruption, or
the task itself). Optionally, fixed training examples are scored like the held-out ones
(``train.eval_train_examples``: train vs validation accuracy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from archcmp.data import Formatter, Task, eval_batches, fixed_batches, vocab
from archcmp.model.config import ConfigError
from archcmp.model.objectives import EvalSums


@dataclass(frozen=True)
class EvalSets:
    held_out: list[dict]     # task layout of the held-out examples: [B, T] batches
    objective: list[dict]    # the same examples in the run objective's layout
    train_probe: list[dict]  # fixed training examples in the task layout (empty: not asked for)
    target_chars: int        # characters of the held-out targets (bits per character)


def eval_sets(task: Task, formatter: Formatter, *, arch: str, task_name: str, batch_size: int,
              num_examples: int, num_train_examples: int) -> EvalSets:
    """The run's :class:`EvalSets`; a ConfigError when no held-out example fits ``seq_len``."""
    T, enc_len = formatter.seq_len, formatter.enc_len
    held_out, examples = eval_batches(task, "validation", arch, T, batch_size, num_examples, seed=0, enc_len=enc_len)
    if not examples:
        raise ConfigError(f"task={task_name!r}: no validation example fits task.seq_len={T}")
    objective = fixed_batches(examples, formatter, batch_size, task.pack_by_default)
    target_chars = sum(len(task.tokenizer.decode(ex.targets[ex.targets >= vocab.N_SPECIAL])) for ex in examples)
    probe = eval_batches(task, "train", arch, T, batch_size, num_train_examples, seed=0,
                         enc_len=enc_len)[0] if num_train_examples else []
    return EvalSets(held_out, objective, probe, target_chars)


def eval_metrics(ev: dict, ob: dict, tr: dict | None, target_chars: int) -> dict[str, float]:
    """The logged evaluation metrics of one model, from its sums
    (:func:`archcmp.training.steps.run_eval`) on the held-out, objective and train-probe sets."""
    ev, ob = EvalSums.of(ev), EvalSums.of(ob)
    out = {"eval_loss": ev.loss, "eval_accuracy": ev.accuracy,
           "eval_bpc": ev.eval_loss_sum / math.log(2) / max(target_chars, 1),
           "eval_objective_loss": ob.objective_loss, "eval_exact_match": ev.exact_match}
    if tr is not None:
        tr = EvalSums.of(tr)
        out.update(train_exact_match=tr.exact_match, train_eval_loss=tr.loss)
    return out
