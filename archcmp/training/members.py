"""The training loop's per-model bookkeeping: a :class:`Member` is one model's run record (its
settings, directory, data order, checkpoints, tracker, counters, summary); :func:`open_members`
makes them (resumed from their checkpoints when asked), and :func:`next_batches` is the host side of
one step for every member."""
from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any, Iterator

from archcmp.model.config import ConfigError
from archcmp.training.steps import split_microbatches
from archcmp.training.summary import RunSummary


class Member:
    """One model's run record: settings (its seed), directory, data order, checkpoints, tracker."""

    def __init__(self, s: Any, run_dir: Path, data: Any, ckpt: Any):
        self.s, self.run_dir, self.data, self.ckpt = s, run_dir, data, ckpt
        self.counters = {"train_tokens": 0, "train_seconds": 0.0, "best_eval_loss": math.inf}
        self.resumed_from: int | None = None
        self.tracker: Any = None
        self.base_key: Any = None
        self.summary: RunSummary | None = None  # what was trained; the outcome is added at the end
        self.label = ""                          # how error messages name it ("" for a lone run)
        self.writes = True                       # this process writes its records (multi-process: process 0)
        self.last_eval: dict[str, float] = {}
        self.steady_tokens, self.steady_time = 0, 0.0
        self.position: dict[str, Any] = data.state()  # data iterator state after the last step that ran

    @property
    def tps(self) -> float:
        return self.steady_tokens / self.steady_time if self.steady_time > 0 else 0.0

    def outcome(self, step: int, flops_per_step: int) -> dict[str, Any]:
        """The summary fields the run fills in at its end (its status and error aside)."""
        c, pos = self.counters, self.position
        return {"step": step, "train_tokens": c["train_tokens"], "train_flops": flops_per_step * step,
                "flops_per_token": flops_per_step * step / max(c["train_tokens"], 1),
                "eval_loss": self.last_eval.get("eval_loss"),
                "best_eval_loss": c["best_eval_loss"] if math.isfinite(c["best_eval_loss"]) else None,
                "eval_metrics": self.last_eval, "data_fingerprint": pos["fingerprint"]["digest"],
                "examples_seen": pos["fingerprint"]["count"], "examples_dropped": pos["dropped"],
                "tokens_per_sec": self.steady_tokens / self.steady_time if self.steady_time > 0 else None,
                "train_seconds": c["train_seconds"]}


def next_batches(members: list, accum: int) -> tuple[list, list[int], list[dict]]:
    """The host side of one step for every member: its next batch ``[A, B/A, ...]``, the example
    tokens in it, and the data position after it (recorded only once the step has run)."""
    batches, tokens, positions = [], [], []
    for mem in members:
        batches.append(split_microbatches(next(mem.data), accum))
        tokens.append(sum(int(ex.inputs.size + ex.targets.size) for ex in mem.data.last_examples))
        positions.append(mem.data.state())
    return batches, tokens, positions


def open_members(group: Any, plan: Any, states: list) -> tuple[list[Member], int]:
    """The members of ``group`` with their data streams and checkpoints; with ``train.resume`` each
    restores its newest checkpoint (into ``states[i]``, in place) and its data position.
    Returns (members, the step to start from)."""
    from archcmp.training import ensemble
    from archcmp.training.checkpoint import Checkpointer

    keep = group.keep_checkpoints(plan.train.keep_checkpoints)
    members = [Member(m, d, plan.train_stream(m.seed), Checkpointer(d / "checkpoints", keep=keep))
               for m, d in zip(group.settings, group.dirs)]
    for i, mem in enumerate(members):
        mem.label = group.label(i)
    with warnings_as_lines():
        resume_at = ensemble.resume_step([m.ckpt for m in members]) if plan.train.resume else None
    step = 0
    if resume_at is not None:
        for i, mem in enumerate(members):
            states[i], meta = _restore(mem.ckpt, group.restore_step(resume_at), states[i])
            mem.data.restore(meta["data"])
            mem.position = mem.data.state()
            step, mem.counters, mem.resumed_from = int(meta["step"]), dict(meta["counters"]), int(meta["step"])
    return members, step


def start_records(members: list[Member], group: Any, plan: Any, placement: dict, step: int) -> None:
    """Each member's tracker (its jsonl record, plus wandb when ``logger=wandb``; nothing on the
    processes other than the primary), dropout key and summary of what is trained."""
    import jax

    from archcmp.tracking.tracker import NullTracker, run_tracker
    from archcmp.training.sweep_names import tracker_group

    for i, (mem, config) in enumerate(zip(members, group.configs)):
        m, ts = mem.s, plan.train
        mem.writes = group.primary
        mem.tracker = NullTracker() if not group.primary else run_tracker(
            m.logger, mem.run_dir, resume_step=step, name=m.run_name,
            group=tracker_group(m.logger.group, m.experiment), tags=[m.arch, m.size, m.task.name],
            config=config, renew_id=step == 0 and not m.train.resume)
        mem.base_key = jax.random.key(m.seed) if plan.model_cfg.dropout > 0 else None
        mem.summary = RunSummary(
            arch=m.arch, size=m.size, task=m.task.name, objective=m.objective, seed=m.seed, experiment=m.experiment,
            run_name=m.run_name, steps=plan.total_steps, batch_size=ts.batch_size, seq_len=plan.seq_len,
            params_total=plan.params.total, params_nonembedding=plan.params.nonembedding,
            model=plan.model_cfg.to_dict(), resumed_from=mem.resumed_from, placement=placement,
            ensemble=group.ensemble_fields(i))


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Runtime warnings raised inside (checkpoint fallbacks) printed as one ``archcmp-train: warning:`` line
    each, without Python's file/line header."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        yield
    for w in caught:
        print(f"archcmp-train: warning: {w.message}", file=sys.stderr)


def _restore(ckpt: Any, step: int | None, target: Any) -> tuple[Any, dict]:
    """Restore a member's checkpoint: an unreadable newest one -> one warning line naming the skipped step(s)
    and the fallback; none readable -> one config-error line naming the directory."""
    with warnings_as_lines():
        try:
            return ckpt.restore(step=step, target=target)
        except FileNotFoundError as err:
            raise ConfigError(f"train.resume=true: {str(err).splitlines()[0]}; relaunch with train.resume=false "
                              "to train from the start (or train.overwrite=true to keep the old run aside)") from None
