"""What a training run is, worked out and validated before anything compiles: the task, the
architecture's formatter, the model config, the evaluation yardstick and the step budget.

Every error here is a one-line :class:`~archcmp.model.config.ConfigError` naming the key and value.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import islice
from typing import Any

from archcmp.data import BatchIterator, Formatter, FullBatchIterator, Task, make_formatter, make_task
from archcmp.data.packing import fit_example
from archcmp.model.accounting import ParamCount, count_params, train_flops_per_row
from archcmp.model.archs import arch_spec
from archcmp.model.config import ConfigError, ModelConfig
from archcmp.training.evaluation import EvalSets, eval_sets
from archcmp.training.settings import RunSettings, TrainSettings


@dataclass(frozen=True)
class RunPlan:
    train: TrainSettings      # the run's train settings (train.batch_size=full filled in)
    task: Task
    formatter: Formatter      # the architecture's layout of the task (and objective)
    model_cfg: ModelConfig
    seq_len: int              # T: the decoder (or only) stack's length
    enc_len: int | None       # the encoder stack's length (encdec), else None
    sets: EvalSets            # the yardstick: the same held-out examples for every architecture and seed
    params: ParamCount
    flops_per_step: int
    total_steps: int

    def train_stream(self, seed: int) -> Any:
        """The training batches of the member with this seed (its own data order)."""
        if self.train.full_batch:
            try:
                return FullBatchIterator(self.task, "train", seed, self.formatter)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        return BatchIterator(self.task, "train", seed, self.train.batch_size, self.formatter)


def plan_run(s: RunSettings, shape: dict, seeds: list[int]) -> RunPlan:
    """The run of settings ``s`` (the size's ``shape`` for its arch) for the members ``seeds``."""
    try:
        task = make_task(s.task.name, **s.task.params)
    except ValueError as err:
        raise ConfigError(f"task={s.task.name!r}: {err}") from None
    ts = s.train
    if ts.full_batch:  # train.batch_size=full: as many rows as training examples
        n_train = task.size("train")
        if n_train is None:
            raise ConfigError(f"train.batch_size=full: task={s.task.name!r} has an endless training stream")
        ts = dataclasses.replace(ts, batch_size=n_train)
    try:
        model_cfg = s.model_config(task.tokenizer.vocab_size, shape)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    T = s.task.seq_len
    enc_len = arch_spec(s.arch).encoder_len(T, s.task.enc_len)
    if max(T, enc_len or 0) > model_cfg.max_len:
        raise ConfigError(f"model.max_len={model_cfg.max_len}: shorter than task.seq_len={T}")
    if not any(fit_example(ex, T, "drop") is not None for ex in islice(task.examples("validation", 0), 200)):
        raise ConfigError(f"task.seq_len={T}: too short for task {s.task.name!r} "
                          f"(examples need up to {task.max_tokens + 2} tokens)")
    formatter = _formatter(s, task, T, enc_len)
    sets = eval_sets(task, formatter, arch=s.arch, task_name=s.task.name, batch_size=ts.eval_batch_size,
                     num_examples=ts.eval_examples, num_train_examples=ts.eval_train_examples)
    flops_per_step = ts.batch_size * train_flops_per_row(model_cfg, T, enc_len or 0)
    plan = RunPlan(ts, task, formatter, model_cfg, T, enc_len, sets, count_params(model_cfg), flops_per_step, 0)
    ref_params = count_params(s.reference_config(task.tokenizer.vocab_size)).total
    total_steps = _same_budget(len(seeds), [
        budget_steps(ts, ref_params, flops_per_step, plan.train_stream(seed)) for seed in seeds])
    return dataclasses.replace(plan, total_steps=total_steps)


def _formatter(s: RunSettings, task: Task, T: int, enc_len: int | None) -> Formatter:
    options: dict[str, Any] = {"objective": s.objective, "vocab_size": task.tokenizer.vocab_size,
                               "mlm_replacement": s.mlm_replacement, "mlm_rate": s.mlm_rate}
    if arch_spec(s.arch).default_loss_on is not None:  # loss_on is a choice (decoder, prefix_lm)
        options["loss_on"] = s.loss_on
    try:
        return make_formatter(s.arch, T, enc_len, **options)
    except ValueError as err:
        raise ConfigError(f"arch.objective={s.objective!r}: {err}") from None


def budget_steps(ts: TrainSettings, ref_params: int, flops_per_step: int, probe: Any) -> int:
    """Steps of the run: ``train.steps``, or derived from a token or FLOP budget.

    ``tokens_per_param``: tokens_per_param × the size's reference (decoder) parameter count,
    divided by the mean example tokens per batch of the first 20 batches (packing does not depend
    on the architecture, so all four get the same steps and the same data).
    ``flops``: the budget divided by this architecture's own training FLOPs per step, so
    encdec and encoder runs are compute-matched by their own cost, not by 6N.
    """
    if ts.flops is not None:
        return max(1, math.ceil(ts.flops / flops_per_step))
    if ts.tokens_per_param is None:
        return ts.steps
    per_step = []
    for _ in range(20):
        next(probe)
        per_step.append(sum(int(ex.inputs.size + ex.targets.size) for ex in probe.last_examples))
    return max(1, math.ceil(ts.tokens_per_param * ref_params / (sum(per_step) / len(per_step))))


def _same_budget(k: int, steps: list[int]) -> int:
    """All members run in lock-step, so their step budgets (and schedules) must agree."""
    if len(set(steps)) > 1:
        raise ConfigError(f"train.num_seeds={k}: the members' step budgets differ ({steps}; "
                            "train.tokens_per_param depends on each seed's batches); use train.steps or train.flops")
    return steps[0]
