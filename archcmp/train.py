"""Hydra entry point (``archcmp-train``, ``python -m archcmp.train``) and the pure ``train(cfg)``.

Data flows one way: config -> task examples -> per-arch formatter -> model -> loss -> tracker.
A run directory holds ``.hydra/config.yaml``, ``metrics.jsonl``, ``summary.json`` and
``checkpoints/``; relaunching the same command resumes from the last checkpoint, and a run
whose summary says ``complete`` is skipped.
"""
from __future__ import annotations

import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONF_GROUPS = ("arch", "size", "task", "optimizer", "logger", "launcher", "device", "experiment")


def _set_cpu_threads(n_jobs: int, scope: str | Path = ".") -> None:
    """Give each of ``n_jobs`` parallel local jobs its own share of the cores: the job takes a free
    slice (one of ``n_jobs``, claimed with a lock file per sweep ``scope``) and pins every thread of
    its process to it (see archcmp.hosts.claim_cpu_share; XLA thread flags alone do not stop XLA's
    CPU runtime from using every core)."""
    from archcmp.hosts import claim_cpu_share

    claim_cpu_share(n_jobs, scope)


def _release_cpu_threads() -> None:
    from archcmp.hosts import release_cpu_share

    release_cpu_share()


def _quiet_libraries() -> None:
    """orbax logs every checkpoint step through absl at INFO; keep the run log readable."""
    import logging

    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train(cfg: Any, run_dir: str | Path) -> dict:
    """Train one run described by the composed config; returns its summary (also on disk)."""
    _quiet_libraries()
    import jax
    import numpy as np
    from flax import nnx

    from archcmp.accounting import count_params, train_flops_per_row
    from archcmp.checkpoint import Checkpointer
    from archcmp.data import BatchIterator, eval_batches, make_formatter, make_task
    from archcmp.data.pipeline import batch_rng
    from archcmp.data.packing import pack_rows
    from archcmp.data import vocab
    from archcmp.models import build_model
    from archcmp.optim import make_optimizer, schedule
    from archcmp.run_config import ConfigError, parse
    from archcmp.steps import make_eval_step, make_train_step, run_eval, split_microbatches
    from archcmp.track import JsonlTracker, NullTracker, make_tracker, read_summary, to_jsonable
    from archcmp import hosts
    from archcmp.sharding import make_placement

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    s, shape = parse(cfg)
    ts = s.train
    previous = read_summary(run_dir)
    if ts.skip_complete and previous.get("status") == "complete":
        return {**previous, "skipped": True}
    # Devices and processes (XLA flags, jax.distributed, mesh): checked before anything compiles.
    hosts.start(s.device, s.distributed)
    place = make_placement(s.mesh, batch_size=ts.batch_size, grad_accum=ts.grad_accum,
                           eval_batch_size=ts.eval_batch_size)
    primary = hosts.is_primary()  # only process 0 writes run records and talks to wandb

    # ---- data and model (all validated before anything compiles) ------------------------
    try:
        task = make_task(s.task.name, **s.task.params)
    except ValueError as err:
        raise ConfigError(f"task={s.task.name!r}: {err}") from None
    model_cfg = s.model_config(task.tokenizer.vocab_size, shape)
    T, S = s.task.seq_len, (s.task.enc_len or s.task.seq_len)
    if max(T, S if s.arch == "encdec" else 0) > model_cfg.max_len:
        raise ConfigError(f"model.max_len={model_cfg.max_len}: shorter than task.seq_len={T}")
    from itertools import islice

    from archcmp.data.packing import fit_example

    if not any(fit_example(ex, T, "drop") is not None for ex in islice(task.examples("validation", 0), 200)):
        raise ConfigError(f"task.seq_len={T}: too short for task {s.task.name!r} "
                          f"(examples need up to {task.max_tokens + 2} tokens)")
    fmt_options = {"objective": s.objective, "vocab_size": task.tokenizer.vocab_size}
    if s.arch in ("decoder", "prefix_lm"):
        fmt_options["loss_on"] = s.loss_on
    try:
        formatter = make_formatter(s.arch, T, S if s.arch == "encdec" else None, **fmt_options)
    except ValueError as err:
        raise ConfigError(f"arch.objective={s.objective!r}: {err}") from None
    data = BatchIterator(task, "train", s.seed, ts.batch_size, formatter)
    # The yardstick: the same held-out examples for every architecture and seed.
    eval_set, eval_ex = eval_batches(task, "validation", s.arch, T, ts.eval_batch_size, ts.eval_examples,
                                     seed=0, enc_len=S if s.arch == "encdec" else None)
    if not eval_ex:
        raise ConfigError(f"task={s.task.name!r}: no validation example fits task.seq_len={T}")
    obj_set = []
    rest = eval_ex
    while rest:  # the objective's own layout on the same held-out examples
        rows, used = pack_rows(rest, ts.eval_batch_size, T, data.packing)
        obj_set.append(formatter(rows, ts.eval_batch_size, batch_rng(0, len(obj_set)) if formatter.needs_rng else None))
        rest = rest[used:]
    target_chars = sum(len(task.tokenizer.decode(ex.targets[ex.targets >= vocab.N_SPECIAL])) for ex in eval_ex)
    # Optional: fixed *training* examples scored like the held-out ones (train vs validation accuracy).
    train_probe = eval_batches(task, "train", s.arch, T, ts.eval_batch_size, ts.eval_train_examples, seed=0,
                               enc_len=S if s.arch == "encdec" else None)[0] if ts.eval_train_examples else []

    model = build_model(model_cfg, s.seed)
    graphdef, params = nnx.split(model)
    n_params = count_params(model_cfg)
    flops_per_step = ts.batch_size * train_flops_per_row(model_cfg, T, S if s.arch == "encdec" else 0)
    ref_params = count_params(s.model_config(task.tokenizer.vocab_size, s.reference_shape)).total
    probe = BatchIterator(task, "train", s.seed, ts.batch_size, formatter)
    total_steps = budget_steps(ts, ref_params, flops_per_step, probe)
    tx = make_optimizer(s.optim, total_steps)
    lr_at = schedule(s.optim, total_steps)
    state = place.put({"params": params, "opt_state": tx.init(params)})  # sharded on a mesh

    # ---- resume -------------------------------------------------------------------------
    ckpt = Checkpointer(run_dir / "checkpoints", keep=ts.keep_checkpoints)
    step, counters, resumed_from = 0, {"train_tokens": 0, "train_seconds": 0.0, "best_eval_loss": math.inf}, None
    if ts.resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(target=state)
        data.restore(meta["data"])
        step, counters, resumed_from = int(meta["step"]), dict(meta["counters"]), int(meta["step"])
    tracker = NullTracker() if not primary else make_tracker(
        s.logger.get("kind", "jsonl"), run_dir, resume_step=step,
        **({} if s.logger.get("kind") != "wandb" else dict(
            project=s.logger.get("project", "archcmp"), entity=s.logger.get("entity"),
            mode=s.logger.get("mode", "offline"), name=s.run_name, group=s.experiment,
            tags=[s.arch, s.size, s.task.name], config=to_jsonable(_plain(cfg)), job_type="train")))

    train_step = place.wrap_train(make_train_step(graphdef, tx, ts.grad_accum, place.train_jit_kwargs(state)))
    eval_step = place.wrap_eval(make_eval_step(graphdef, place.eval_jit_kwargs(state["params"])))
    base_key = jax.random.key(s.seed) if model_cfg.dropout > 0 else None
    summary: dict[str, Any] = {
        "arch": s.arch, "size": s.size, "task": s.task.name, "objective": s.objective, "seed": s.seed,
        "experiment": s.experiment, "run_name": s.run_name, "steps": total_steps, "batch_size": ts.batch_size,
        "seq_len": T, "params_total": n_params.total, "params_nonembedding": n_params.nonembedding,
        "model": model_cfg.to_dict(), "resumed_from": resumed_from, "status": "running", **place.describe()}

    def evaluate() -> dict[str, float]:
        ev = run_eval(eval_step, state["params"], eval_set)
        ob = run_eval(eval_step, state["params"], obj_set)
        w = max(ev["eval_weight_sum"], 1.0)
        out = {"eval_loss": ev["eval_loss_sum"] / w, "eval_accuracy": ev["eval_correct_sum"] / w,
               "eval_bpc": ev["eval_loss_sum"] / math.log(2) / max(target_chars, 1),
               "eval_objective_loss": ob["obj_loss_sum"] / max(ob["obj_weight_sum"], 1.0),
               "eval_exact_match": ev["eval_exact_sum"] / max(ev["eval_answer_count"], 1.0)}
        if train_probe:
            tr = run_eval(eval_step, state["params"], train_probe)
            out.update(train_exact_match=tr["eval_exact_sum"] / max(tr["eval_answer_count"], 1.0),
                       train_eval_loss=tr["eval_loss_sum"] / max(tr["eval_weight_sum"], 1.0))
        counters["best_eval_loss"] = min(counters["best_eval_loss"], out["eval_loss"])
        return out

    def save() -> None:
        meta = {"step": step, "data": data.state(), "counters": counters}
        ckpt.save(step, state, meta, force=True)

    status, error, last_eval = "failed", None, {}
    pbar = _progress(ts, total_steps, step)
    t_start = time.perf_counter()
    steady_tokens, steady_time = 0, 0.0
    try:
        with tracker:
            while step < total_steps:
                t0 = time.perf_counter()
                batch = next(data)
                tokens = sum(int(ex.inputs.size + ex.targets.size) for ex in data.last_examples)
                key = None if base_key is None else jax.random.fold_in(base_key, step)
                state, m = train_step(state, split_microbatches(batch, ts.grad_accum), key)
                m = jax.device_get(m)
                if not bool(m["finite"]):
                    raise FloatingPointError(
                        f"non-finite loss or gradient at step {step + 1} (loss={float(m['train_loss'])}); "
                        f"the last good checkpoint is step {ckpt.latest_step()}: lower optimizer.lr or "
                        "raise optimizer.warmup_steps")
                step += 1
                dt = time.perf_counter() - t0
                counters["train_tokens"] += tokens
                counters["train_seconds"] += dt
                if step > 1:  # the first step includes compilation
                    steady_tokens, steady_time = steady_tokens + tokens, steady_time + dt
                tps = steady_tokens / steady_time if steady_time > 0 else 0.0
                if step % ts.log_every == 0 or step == total_steps:
                    tracker.log({"train_loss": float(m["train_loss"]), "train_accuracy": float(m["train_accuracy"]),
                                 "grad_norm": float(m["grad_norm"]), "lr": float(lr_at(step - 1)),
                                 "tokens": counters["train_tokens"], "tokens_per_sec": tps}, step)
                if step % ts.eval_every == 0 or step == total_steps:
                    last_eval = evaluate()
                    tracker.log(last_eval, step)
                if ts.checkpoint_every and (step % ts.checkpoint_every == 0 or step == total_steps):
                    save()
                pbar.update(1)
                pbar.set_postfix(loss=f"{float(m['train_loss']):.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            if not last_eval:  # resumed after the final step's checkpoint
                last_eval = evaluate()
            status = "complete"
    except BaseException as exc:  # recorded in the summary, then re-raised
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        pbar.close()
        ckpt.close()
        summary.update({
            "status": status, "error": error, "step": step, "train_tokens": counters["train_tokens"],
            "train_flops": flops_per_step * step,
            "flops_per_token": flops_per_step * step / max(counters["train_tokens"], 1),
            "eval_loss": last_eval.get("eval_loss"), "best_eval_loss": counters["best_eval_loss"]
            if math.isfinite(counters["best_eval_loss"]) else None,
            "eval_metrics": last_eval, "data_fingerprint": data.fingerprint,
            "examples_seen": data.examples_seen, "examples_dropped": data.dropped,
            "tokens_per_sec": steady_tokens / steady_time if steady_time > 0 else None,
            "wall_seconds": time.perf_counter() - t_start, "train_seconds": counters["train_seconds"]})
        if primary:
            JsonlTracker(run_dir, record_status=False).log_summary(to_jsonable(summary))
            tracker.log_summary(to_jsonable(summary))
    return summary


def budget_steps(ts, ref_params: int, flops_per_step: int, probe) -> int:
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


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True) if hasattr(cfg, "_get_node") else cfg
    except Exception:  # noqa: BLE001 - a config that cannot be resolved is logged as-is
        return cfg


def _progress(ts, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=None if ts.progress else True, unit="step", dynamic_ncols=True,
                leave=False)


def check_overrides(argv: list[str]) -> str | None:
    """One-line message for an override naming a config group option that does not exist."""
    for arg in argv:
        if arg.startswith("~") and arg[1:].split("=")[0] in CONF_GROUPS and arg[1:].split("=")[0] != "experiment":
            return f"{arg[1:].split('=')[0]}: missing; it cannot be removed (choose one of conf/{arg[1:].split('=')[0]}/)"
        if "=" not in arg or arg.startswith(("hydra.", "+", "~", "-")):
            continue
        key, value = arg.split("=", 1)
        if key not in CONF_GROUPS:
            continue
        options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        values = [v for v in value.split(",") if v]
        if not values:
            return f"{key}={value!r}: missing value; choose one of {options}"
        for v in values:
            if v == "null" and key != "experiment":
                return f"{key}=null: a {key} is required; choose one of {options}"
            if v != "null" and v not in options:
                return f"{key}={v!r}: unknown {key}; choose one of {options}"
    return None


def _record_failure(run_dir: str, err: BaseException) -> None:
    """Make sure a failed run leaves a summary saying so (train() writes one once it started)."""
    from archcmp.hosts import is_primary
    from archcmp.track import JsonlTracker

    if not is_primary():  # multi-process: process 0 records it
        return

    tracker = JsonlTracker(run_dir, record_status=False)
    summary = tracker.read_summary()
    if summary.get("status") in (None, "running"):
        tracker.log_summary({**summary, "status": "failed", "error": f"{type(err).__name__}: {err}",
                             "run_name": Path(run_dir).name})


def _hydra_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from archcmp.run_config import ConfigError

    hc = HydraConfig.get()
    n_jobs = hc.launcher.get("n_jobs") if "n_jobs" in hc.launcher else None
    if n_jobs:
        _set_cpu_threads(int(n_jobs), hc.sweep.dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        summary = train(cfg, hc.runtime.output_dir)
    except Exception as err:  # noqa: BLE001 - recorded in summary.json; a sweep goes on
        _record_failure(hc.runtime.output_dir, err)
        if isinstance(err, ConfigError):
            print(f"archcmp-train: error: {err}", file=sys.stderr)
        else:
            print(f"archcmp-train: run {hc.runtime.output_dir} failed: {type(err).__name__}: {err}", file=sys.stderr)
            if os.environ.get("ARCHCMP_TRACEBACK"):
                traceback.print_exc()
        if multirun:
            return
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    finally:
        _release_cpu_threads()
    word = "skipped (already complete)" if summary.get("skipped") else summary["status"]
    print(f"[{summary['run_name']}] {word}: eval_loss={summary.get('eval_loss')} "
          f"params={summary['params_total']:,} fingerprint={summary['data_fingerprint'][:12]}")


def main() -> None:
    """Console script: validate group overrides in one line, then hand over to Hydra."""
    err = check_overrides(sys.argv[1:])
    if err:
        print(f"archcmp-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    import hydra

    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_hydra_task)()


if __name__ == "__main__":
    main()
