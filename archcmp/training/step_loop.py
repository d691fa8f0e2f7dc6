"""The loop over training steps, the same for one model and for k (``train.num_seeds``): it talks
to an engine (:mod:`archcmp.training.ensemble`) that takes and returns one entry per member.

Each step is dispatched, the next batch is built on the host while it runs, then its metrics are
read. Evaluation, logging and checkpoints follow their ``train.*_every`` settings; Ctrl-C finishes
the running step, saves and records ``interrupted``. The trackers close last, after every member's
finished summary (status included) has reached them.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from archcmp.training import early_stop
from archcmp.training.evaluation import eval_metrics
from archcmp.training.members import Member, next_batches
from archcmp.training.summary import error_fields


def run_steps(members: list[Member], engine: Any, state: Any, plan: Any, step: int, lr_at: Callable) -> list[dict]:
    """Train ``members`` from ``step`` to ``plan.total_steps``; write and return their summaries."""
    import jax

    ts, total_steps, sets = plan.train, plan.total_steps, plan.sets
    rule = ts.early_stop  # train.early_stop: None, or the rule every member must meet

    def evaluate() -> None:
        ev, ob = engine.sums(state["params"], sets.held_out), engine.sums(state["params"], sets.objective)
        tr = engine.sums(state["params"], sets.train_probe) if sets.train_probe else [None] * len(members)
        for mem, e, o, t in zip(members, ev, ob, tr):
            mem.last_eval = eval_metrics(e, o, t, sets.target_chars)
            mem.counters["best_eval_loss"] = min(mem.counters["best_eval_loss"], mem.last_eval["eval_loss"])
            if rule is not None:
                rule.update(mem.counters, mem.last_eval, step)

    def all_met() -> bool:
        return rule is not None and all(rule.met(mem.counters) for mem in members)

    def save() -> None:
        for i, mem in enumerate(members):
            meta = {"step": step, "data": mem.position, "counters": mem.counters}
            mem.ckpt.save(step, engine.member(state, i), meta, force=True)

    status, error = "failed", {"error": None, "error_kind": None}
    pbar = _progress(ts.progress, total_steps, step)
    t_start = time.perf_counter()
    ran = 0  # steps run by this process: its first one includes compilation (also after a resume)
    stopped = all_met()  # resumed after the group had already met the early-stop rule
    stop = _StopRequest()  # Ctrl-C: finish the running step, save, record "interrupted"
    with contextlib.ExitStack() as trackers:
        for mem in members:
            trackers.enter_context(mem.tracker)
        try:
            upcoming = next_batches(members, ts.grad_accum) if step < total_steps and not stopped else None
            while step < total_steps and not stopped:
                if stop.requested:
                    raise KeyboardInterrupt(f"interrupted at step {step}")
                t0 = time.perf_counter()
                batches, tokens, positions = upcoming
                keys = [None if mem.base_key is None else jax.random.fold_in(mem.base_key, step) for mem in members]
                state, pending = engine.step(state, batches, keys)  # dispatched: runs while the host ...
                if step + 1 < total_steps:  # ... builds the next batch
                    upcoming = next_batches(members, ts.grad_accum)
                ms = engine.read(pending)
                for mem, m in zip(members, ms):
                    if not bool(m["finite"]):
                        raise FloatingPointError(
                            f"non-finite loss or gradient at step {step + 1} (loss={float(m['train_loss'])}"
                            f"{mem.label}); the last good checkpoint is step "
                            f"{mem.ckpt.latest_step()}: lower optimizer.lr or raise optimizer.warmup_steps")
                step, ran = step + 1, ran + 1
                for mem, position in zip(members, positions):
                    mem.position = position  # what checkpoints and the summary record: consumed data only
                dt = time.perf_counter() - t0
                for mem, m, n_tokens in zip(members, ms, tokens):
                    mem.counters["train_tokens"] += n_tokens
                    mem.counters["train_seconds"] += dt
                    if ran > 1:  # the first step of this process includes compilation
                        mem.steady_tokens, mem.steady_time = mem.steady_tokens + n_tokens, mem.steady_time + dt
                    if step % ts.log_every == 0 or step == total_steps:
                        mem.tracker.log({"train_loss": float(m["train_loss"]),
                                         "train_accuracy": float(m["train_accuracy"]),
                                         "grad_norm": float(m["grad_norm"]), "param_norm": float(m["param_norm"]),
                                         "lr": float(lr_at(step - 1)),
                                         "tokens": mem.counters["train_tokens"], "tokens_per_sec": mem.tps}, step)
                if step % ts.eval_every == 0 or step == total_steps:
                    evaluate()
                    for mem in members:
                        mem.tracker.log(mem.last_eval, step)
                    stopped = all_met()
                if ts.checkpoint_every and (step % ts.checkpoint_every == 0 or step == total_steps or stopped):
                    save()
                pbar.update(1)
                pbar.set_postfix(loss=f"{float(ms[0]['train_loss']):.3f}", tok_s=f"{members[0].tps:,.0f}",
                                 refresh=False)
            if not members[0].last_eval:  # resumed after the final step's checkpoint
                evaluate()
            status = "complete"
        except BaseException as exc:  # recorded in the summary, then re-raised
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if stop.requested and not stop.forced and ts.checkpoint_every and step > 0:  # between steps: consistent
                save()
            error = error_fields(exc)
            raise
        finally:
            stop.restore()
            pbar.close()
            summaries = []
            for mem in members:
                mem.ckpt.close()
                ended = early_stop.outcome(rule, mem.counters, step, total_steps, stopped) if status == "complete" else {}
                mem.summary = mem.summary.finish(status=status, **error, **mem.outcome(step, plan.flops_per_step),
                                                 **ended, wall_seconds=time.perf_counter() - t_start)
                summaries.append(mem.summary.write(mem.run_dir, mem.tracker) if mem.writes else mem.summary.as_dict())
    return summaries


class _StopRequest:
    """SIGINT (Ctrl-C) while training: remembered, acted on between steps (the loop then saves a
    checkpoint and stops); a second Ctrl-C interrupts at once. Off the main thread: not installed."""

    def __init__(self):
        import signal

        self.requested, self.forced, self._previous = False, False, None
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            pass

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True  # mid-step: the state may be half-updated, nothing is saved
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _progress(enabled: bool, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=None if enabled else True, unit="step", dynamic_ncols=True,
                leave=False)
