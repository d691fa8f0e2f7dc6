"""Hydra entry point (``archcmp-train``, ``python -m archcmp.training.loop``) and the pure ``train(cfg)``.

Data flows one way: config -> task examples -> per-arch formatter -> model -> loss -> tracker.
A run directory holds ``identity.json``, ``.hydra/config.yaml``, ``config.yaml``,
``metrics.jsonl``, ``summary.json`` and ``checkpoints/``. Relaunching the same command resumes
from the last checkpoint, and a run whose summary says ``complete`` is skipped -- both only when
the directory's identity matches the command's settings (:mod:`archcmp.training.identity`), and only by
the one process holding the directory's lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from archcmp.training import sweep_names

sweep_names.register()  # ${archcmp.swept:} in conf/config.yaml (also in joblib's worker processes)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONF_GROUPS = ("arch", "size", "task", "optimizer", "logger", "launcher", "device", "experiment")


def _set_cpu_threads(n_jobs: int, scope: str | Path = ".") -> None:
    """Give each of ``n_jobs`` parallel local jobs its own share of the cores: the job takes a free
    slice (one of ``n_jobs``, claimed with a lock file per sweep ``scope``) and pins every thread of
    its process to it (see archcmp.distributed.hosts.claim_cpu_share; XLA thread flags alone do not stop XLA's
    CPU runtime from using every core)."""
    from archcmp.distributed.hosts import claim_cpu_share

    claim_cpu_share(n_jobs, scope)


def _release_cpu_threads() -> None:
    from archcmp.distributed.hosts import release_cpu_share

    release_cpu_share()


def train(cfg: Any, run_dir: str | Path, *, on_accept: Any = None) -> dict:
    """Train one run described by the composed config; returns its summary (also on disk).

    ``train.num_seeds=k > 1`` trains the members seed..seed+k-1 together in one vmapped step
    (see :mod:`archcmp.training.ensemble`), each with its own run directory ``run_dir/<member run_name>/``;
    the result is then the group's summary with the members' summaries under ``"members"``.

    Before anything is written, every run directory is locked (one writer) and its recorded
    identity compared with this config's (:mod:`archcmp.training.identity`); a mismatch raises
    :class:`archcmp.training.identity.RunRefused` and leaves the directory untouched. ``on_accept(run_dir)``
    is called once the directories are claimed (the Hydra entry point writes ``.hydra/`` there).
    """
    from archcmp.training import ensemble
    from archcmp.distributed import hosts
    from archcmp.training import identity
    from archcmp.training.settings import parse

    run_dir = Path(run_dir)
    s, shape = parse(cfg)
    # Devices and processes first (nothing compiles yet): in a multi-process run only process 0
    # writes the run records, so only process 0 claims the directories and checks their identity.
    hosts.start(s.device, s.distributed)
    primary = hosts.is_primary()
    k = s.train.num_seeds
    # The members: this run itself (k=1), or seed+i in run_dir/<its run_name>/ (k>1).
    member_cfgs = [cfg] if k == 1 else ensemble.member_configs(cfg, s.seed, k)
    settings = [s] if k == 1 else [parse(c)[0] for c in member_cfgs]
    dirs = [run_dir] if k == 1 else [run_dir / m.run_name for m in settings]
    resolved = [_resolved(c) for c in member_cfgs]
    records = None
    if s.finetune is not None:  # the identity holds the source run's identity and checkpoint step
        from archcmp.training import finetune

        records = [finetune.source_record(finetune.source_dir(s.finetune.source, m.seed), s.finetune.step)
                   for m in settings]
        resolved = [finetune.with_source(r, rec) for r, rec in zip(resolved, records)]
    locks: list = []
    try:
        for d in dict.fromkeys([run_dir, *dirs]) if primary else ():  # the group directory too (k>1)
            locks.append(identity.RunLock(d).acquire())
        idents = []
        for d, r in zip(dirs, resolved):
            if not primary:  # the other processes neither read nor write the records
                idents.append(identity.identity_of(r))
                continue
            if s.train.overwrite:
                aside = identity.move_aside(d)
                if aside is not None:
                    print(f"archcmp-train: train.overwrite=true: moved the earlier run {d} to {aside}", file=sys.stderr)
            idents.append(identity.check(d, r))
        if primary and s.train.overwrite and k > 1:
            (run_dir / ensemble.GROUP_FILE).unlink(missing_ok=True)
        if s.finetune is not None:
            def write_records() -> None:
                if primary:
                    for d, mcfg, ident in zip(dirs, member_cfgs, idents):
                        identity.write(d, ident)
                        _write_resolved_config(d, mcfg)
                    if k > 1:
                        ensemble.write_group_record(run_dir, s, [d.name for d in dirs], member_cfgs)

            return ensemble.result(s, finetune.run(s, settings, dirs, records, write_records, on_accept, run_dir))
        return _train(cfg, run_dir, s, shape, member_cfgs, settings, dirs, idents, on_accept)
    finally:
        for lock in reversed(locks):
            lock.release()


def _train(cfg: Any, run_dir: Path, s: Any, shape: dict, member_cfgs: list, settings: list, dirs: list[Path],
           idents: list[dict], on_accept: Any) -> dict:
    """The run itself, once its directories are claimed (see :func:`train`)."""
    from archcmp.distributed.hosts import quiet_libraries

    quiet_libraries()
    import jax
    from flax import nnx

    from archcmp.training import ensemble
    from archcmp.training import identity
    from archcmp.model.accounting import count_params, train_flops_per_row
    from archcmp.model.archs import arch_spec
    from archcmp.training.checkpoint import Checkpointer
    from archcmp.data import BatchIterator, FullBatchIterator, make_formatter, make_task
    from archcmp.training.evaluation import eval_metrics, eval_sets
    from archcmp.model.models import build_model
    from archcmp.training.optim import make_optimizer, schedule
    from archcmp.training.settings import ConfigError
    from archcmp.training.members import Member, next_batches
    from archcmp.tracking.tracker import JsonlTracker, NullTracker, read_summary, run_tracker, to_jsonable
    from archcmp.distributed import hosts
    from archcmp.distributed.sharding import make_placement

    ts, k = s.train, s.train.num_seeds
    previous = [read_summary(d) for d in dirs]
    if ts.skip_complete and all(p.get("status") == "complete" for p in previous):
        return ensemble.result(s, [{**p, "skipped": True} for p in previous])
    try:  # (devices and processes were started by train(), before the directories were claimed)
        task = make_task(s.task.name, **s.task.params)
    except ValueError as err:
        raise ConfigError(f"task={s.task.name!r}: {err}") from None
    if ts.full_batch:  # train.batch_size=full: as many rows as training examples
        n_train = task.size("train")
        if n_train is None:
            raise ConfigError(f"train.batch_size=full: task={s.task.name!r} has an endless training stream")
        ts = dataclasses.replace(ts, batch_size=n_train)
        s = dataclasses.replace(s, train=ts)
        settings = [dataclasses.replace(m, train=ts) for m in settings]
    place = make_placement(s.mesh, batch_size=ts.batch_size, grad_accum=ts.grad_accum,
                           eval_batch_size=ts.eval_batch_size)
    ensemble.check_placement(k, place)
    primary = hosts.is_primary()  # only process 0 writes run records and talks to wandb
    if primary:
        if on_accept is not None:
            on_accept(run_dir)

    # ---- data and model (all validated before anything compiles) ------------------------
    try:
        model_cfg = s.model_config(task.tokenizer.vocab_size, shape)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    T = s.task.seq_len
    enc_len = arch_spec(s.arch).encoder_len(T, s.task.enc_len)  # the encoder stack's length (encdec), else None
    if max(T, enc_len or 0) > model_cfg.max_len:
        raise ConfigError(f"model.max_len={model_cfg.max_len}: shorter than task.seq_len={T}")
    from itertools import islice

    from archcmp.data.packing import fit_example

    if not any(fit_example(ex, T, "drop") is not None for ex in islice(task.examples("validation", 0), 200)):
        raise ConfigError(f"task.seq_len={T}: too short for task {s.task.name!r} "
                          f"(examples need up to {task.max_tokens + 2} tokens)")
    fmt_options = {"objective": s.objective, "vocab_size": task.tokenizer.vocab_size,
                   "mlm_replacement": s.mlm_replacement}
    if arch_spec(s.arch).default_loss_on is not None:  # loss_on is a choice (decoder, prefix_lm)
        fmt_options["loss_on"] = s.loss_on
    try:
        formatter = make_formatter(s.arch, T, enc_len, **fmt_options)
    except ValueError as err:
        raise ConfigError(f"arch.objective={s.objective!r}: {err}") from None
    # The yardstick: the same held-out examples for every architecture and seed.
    sets = eval_sets(task, formatter, arch=s.arch, task_name=s.task.name, batch_size=ts.eval_batch_size,
                     num_examples=ts.eval_examples, num_train_examples=ts.eval_train_examples)

    n_params = count_params(model_cfg)
    flops_per_step = ts.batch_size * train_flops_per_row(model_cfg, T, enc_len or 0)
    ref_params = count_params(s.reference_config(task.tokenizer.vocab_size)).total
    def train_stream(seed: int):
        if ts.full_batch:
            try:
                return FullBatchIterator(task, "train", seed, formatter)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        return BatchIterator(task, "train", seed, ts.batch_size, formatter)

    total_steps = ensemble.check_budgets(k, [
        budget_steps(ts, ref_params, flops_per_step, train_stream(m.seed)) for m in settings])
    tx = make_optimizer(s.optim, total_steps)
    lr_at = schedule(s.optim, total_steps)
    states = []
    for m in settings:  # every member initialised exactly as its own num_seeds=1 run would be
        graphdef, params = nnx.split(build_model(model_cfg, m.seed))
        states.append(place.put({"params": params, "opt_state": tx.init(params)}))  # sharded on a mesh
    if primary:  # validated: the directories now belong to these settings
        for d, mcfg, ident in zip(dirs, member_cfgs, idents):
            identity.write(d, ident)
            _write_resolved_config(d, mcfg)
    if k > 1 and primary:
        ensemble.write_group_record(run_dir, s, [d.name for d in dirs], member_cfgs)

    # ---- resume -------------------------------------------------------------------------
    # k>1: keep two checkpoints at least, so a kill between the members' saves leaves a common step.
    keep = ts.keep_checkpoints if k == 1 else max(ts.keep_checkpoints, 2)
    members = [Member(m, d, train_stream(m.seed),
                       Checkpointer(d / "checkpoints", keep=keep)) for m, d in zip(settings, dirs)]
    with _warnings_as_lines():
        resume_at = ensemble.resume_step([m.ckpt for m in members]) if ts.resume else None
    step = 0
    if resume_at is not None:
        for i, mem in enumerate(members):
            states[i], meta = _restore(mem.ckpt, None if k == 1 else resume_at, states[i])
            mem.data.restore(meta["data"])
            mem.position = mem.data.state()
            step, mem.counters, mem.resumed_from = int(meta["step"]), dict(meta["counters"]), int(meta["step"])
    engine = ensemble.make_engine(k, graphdef, tx, ts.grad_accum, place, states[0])
    state = engine.combine(states)  # k>1: stacked on a leading member axis
    del states
    for i, (mem, mcfg) in enumerate(zip(members, member_cfgs)):
        m = mem.s
        mem.tracker = NullTracker() if not primary else run_tracker(
            m.logger, mem.run_dir, resume_step=step, name=m.run_name, group=_tracker_group(m),
            tags=[m.arch, m.size, m.task.name], config=_plain(mcfg), renew_id=step == 0 and not m.train.resume)
        mem.base_key = jax.random.key(m.seed) if model_cfg.dropout > 0 else None
        mem.summary = {
            "arch": m.arch, "size": m.size, "task": m.task.name, "objective": m.objective, "seed": m.seed,
            "experiment": m.experiment, "run_name": m.run_name, "steps": total_steps, "batch_size": ts.batch_size,
            "seq_len": T, "params_total": n_params.total, "params_nonembedding": n_params.nonembedding,
            "model": model_cfg.to_dict(), "resumed_from": mem.resumed_from, "status": "running", **place.describe()}
        if k > 1:
            mem.summary["ensemble"] = {"num_seeds": k, "member": i,
                                       "seeds": [x.seed for x in settings], "group_dir": str(run_dir)}

    def evaluate() -> None:
        ev, ob = engine.sums(state["params"], sets.held_out), engine.sums(state["params"], sets.objective)
        tr = engine.sums(state["params"], sets.train_probe) if sets.train_probe else [None] * k
        for mem, e, o, t in zip(members, ev, ob, tr):
            mem.last_eval = eval_metrics(e, o, t, sets.target_chars)
            mem.counters["best_eval_loss"] = min(mem.counters["best_eval_loss"], mem.last_eval["eval_loss"])

    def save() -> None:
        for i, mem in enumerate(members):
            meta = {"step": step, "data": mem.position, "counters": mem.counters}
            mem.ckpt.save(step, engine.member(state, i), meta, force=True)

    status, error = "failed", {"error": None, "error_kind": None}
    pbar = _progress(ts, total_steps, step)
    t_start = time.perf_counter()
    ran = 0  # steps run by this process: its first one includes compilation (also after a resume)
    stop = _StopRequest()  # Ctrl-C: finish the running step, save, record "interrupted"
    # The trackers close last, after the finished summary (status included) has reached them.
    with contextlib.ExitStack() as trackers:
        for mem in members:
            trackers.enter_context(mem.tracker)
        try:
            upcoming = next_batches(members, ts.grad_accum) if step < total_steps else None
            while step < total_steps:
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
                            f"{'' if k == 1 else ', member ' + mem.s.run_name}); the last good checkpoint is step "
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
                if ts.checkpoint_every and (step % ts.checkpoint_every == 0 or step == total_steps):
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
            error = _error_fields(exc)
            raise
        finally:
            stop.restore()
            pbar.close()
            for mem in members:
                mem.ckpt.close()
                c = mem.counters
                mem.summary.update({
                    "status": status, **error, "step": step, "train_tokens": c["train_tokens"],
                    "train_flops": flops_per_step * step, "flops_per_token": flops_per_step * step / max(c["train_tokens"], 1),
                    "eval_loss": mem.last_eval.get("eval_loss"), "best_eval_loss": c["best_eval_loss"]
                    if math.isfinite(c["best_eval_loss"]) else None,
                    "eval_metrics": mem.last_eval, "data_fingerprint": mem.position["fingerprint"]["digest"],
                    "examples_seen": mem.position["fingerprint"]["count"], "examples_dropped": mem.position["dropped"],
                    "tokens_per_sec": mem.steady_tokens / mem.steady_time if mem.steady_time > 0 else None,
                    "wall_seconds": time.perf_counter() - t_start, "train_seconds": c["train_seconds"]})
                if primary:
                    JsonlTracker(mem.run_dir, record_status=False).log_summary(to_jsonable(mem.summary))
                    mem.tracker.log_summary(to_jsonable(mem.summary))
    return ensemble.result(s, [mem.summary for mem in members])


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


@contextlib.contextmanager
def _warnings_as_lines():
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
    from archcmp.training.settings import ConfigError

    with _warnings_as_lines():
        try:
            return ckpt.restore(step=step, target=target)
        except FileNotFoundError as err:
            raise ConfigError(f"train.resume=true: {str(err).splitlines()[0]}; relaunch with train.resume=false "
                              "to train from the start (or train.overwrite=true to keep the old run aside)") from None


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


def _tracker_group(m: Any) -> str:
    """A run's tracker group (wandb): ``logger.group``, else ``experiment_name``, else (a sweep left
    at ``default``) the sweep directory's name and the keys it varies."""
    from archcmp.training.sweep_names import env_swept, sweep_group

    group = m.logger.group or (m.experiment if m.experiment != "default" else None)
    if group is not None:
        return group
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return sweep_group(Path(hc.sweep.dir).name, env_swept()) if hc.mode == RunMode.MULTIRUN else m.experiment
    except ValueError:  # not under Hydra
        return m.experiment


def _resolved(cfg: Any) -> dict:
    """The config as plain values, every interpolation filled in, without Hydra's own node."""
    return {k: v for k, v in dict(_plain(cfg)).items() if k != "hydra"}


def _write_resolved_config(run_dir: Path, cfg: Any) -> None:
    """``run_dir/config.yaml``: the run's config with every interpolation filled in (Hydra's own
    ``.hydra/config.yaml`` keeps them, e.g. ``run_name: ${arch.name}-...``)."""
    from omegaconf import OmegaConf

    plain = _resolved(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    OmegaConf.save(OmegaConf.create(plain), tmp)
    os.replace(tmp, run_dir / "config.yaml")


def _progress(ts, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=None if ts.progress else True, unit="step", dynamic_ncols=True,
                leave=False)


def check_overrides(argv: list[str]) -> str | None:
    """One-line message for an override naming a config group option that does not exist."""
    from archcmp.model.config import ModelConfig

    fields = sorted(f.name for f in dataclasses.fields(ModelConfig))
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key.lstrip("+~").startswith("hydra/launcher"):
            return (f"{key}: set the launcher with launcher=NAME (conf/launcher/, e.g. launcher=joblib), which "
                    "also sets its n_jobs and CPU sharing; hydra/launcher= would skip them")
        if key.lstrip("+~").startswith("model.") and key.lstrip("+~").split(".", 1)[1] not in fields:
            return f"{key.lstrip('+~')}: unknown model config key; known keys: {fields}"
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


def model_overrides(argv: list[str]) -> list[str]:
    """``model.FIELD=VALUE`` (the README's form) as Hydra's add-or-override ``++model.FIELD=VALUE``:
    the model group starts empty (fields left out take the arch/size values), so a plain override of
    a key it does not hold would be refused by Hydra. ``+model.FIELD=`` keeps working."""
    out = []
    for arg in argv:
        if arg.startswith(("model.", "+model.")) and "=" in arg:
            arg = "++" + arg.lstrip("+")
        out.append(arg)
    return out


def _error_fields(err: BaseException) -> dict:
    """How a failure goes into summary.json: ``error``, the text for people, and ``error_kind``,
    for programs (the sweep report): ``"config"`` for a bad setting, else the exception's class."""
    from archcmp.training.settings import ConfigError

    kind = "config" if isinstance(err, ConfigError) else type(err).__name__
    return {"error": f"{type(err).__name__}: {err}", "error_kind": kind}


def _record_failure(run_dir: str, err: BaseException) -> None:
    """Make sure a failed run leaves a summary saying so (train() writes one once it started)."""
    from archcmp.distributed.hosts import is_primary
    from archcmp.training.identity import RunLock, RunRefused

    if not is_primary():  # multi-process: process 0 records it
        return
    try:  # a directory another process is writing is not ours to record in
        lock = RunLock(Path(run_dir)).acquire()
    except RunRefused:
        return
    try:
        _record_in(run_dir, err)
    finally:
        lock.release()


def _record_in(run_dir: str, err: BaseException) -> None:
    from archcmp.training.ensemble import member_dirs
    from archcmp.tracking.tracker import JsonlTracker

    for d in member_dirs(run_dir):  # the run itself, or the members of a train.num_seeds=k group
        tracker = JsonlTracker(d, record_status=False)
        summary = tracker.read_summary()
        if summary.get("status") in (None, "running"):
            tracker.log_summary({**summary, "status": "failed", **_error_fields(err), "run_name": d.name})


def _write_hydra_record(cfg: Any, run_dir: Path) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, but only once this process has
    claimed the run directory (conf/config.yaml sets ``hydra.output_subdir: null`` so Hydra itself
    writes nothing into a directory that may belong to another run or another writer)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    out = Path(run_dir) / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}), out / "hydra.yaml")
    OmegaConf.save(hc.overrides.task, out / "overrides.yaml")


def _name_like_the_directory(cfg: Any, hc: Any) -> None:
    """A sweep job whose directory got the swept keys the run name hides (``-lr0.003``,
    :mod:`archcmp.sweep_names`) carries them in its ``run_name`` too (summary, wandb, tables)."""
    from omegaconf import OmegaConf, open_dict

    swept = sweep_names.env_swept()
    if not swept:
        return
    template = sweep_names.run_name_template(cfg)
    extra = sweep_names.suffix(cfg, template, OmegaConf.to_container(hc.runtime.choices), swept)
    if extra and Path(hc.runtime.output_dir).name == f"{cfg.run_name}{extra}":
        with open_dict(cfg):
            cfg.run_name = template + extra  # still an interpolation: num_seeds members re-resolve it


def _hydra_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from archcmp.training.identity import RunRefused
    from archcmp.training.settings import ConfigError, parse_launcher
    from archcmp.training.sweep import note_refused

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        _name_like_the_directory(cfg, hc)
    try:
        parse_launcher(hc.launcher)
        n_jobs = hc.launcher.get("n_jobs") if "n_jobs" in hc.launcher else None
        if n_jobs:
            _set_cpu_threads(int(n_jobs), hc.sweep.dir)
        summary = train(cfg, hc.runtime.output_dir, on_accept=lambda d: _write_hydra_record(cfg, d))
    except RunRefused as err:  # nothing was written: no failure record either
        print(f"archcmp-train: error: {err}", file=sys.stderr)
        if multirun:
            note_refused(hc.runtime.output_dir, str(err))
            return
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"archcmp-train: {err or 'interrupted'} (run {hc.runtime.output_dir}: summary says interrupted, "
              "last checkpoint kept); relaunch the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - recorded in summary.json; a sweep goes on
        _record_failure(hc.runtime.output_dir, err)
        if isinstance(err, ConfigError):
            if not multirun:  # a sweep reports each distinct bad-config message once, at its end
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
    for member in summary.get("members", [summary]):  # train.num_seeds=k: one line per member
        word = "skipped (already complete)" if member.get("skipped") else member["status"]
        print(f"[{member.get('run_name', '?')}] {word}: eval_loss={member.get('eval_loss')} "
              f"params={member['params_total']:,} fingerprint={member['data_fingerprint'][:12]}")


def main() -> None:
    """Console script: validate group overrides in one line, then hand over to Hydra."""
    from archcmp.distributed.hosts import use_huge_pages

    use_huge_pages()  # restarts this process once (malloc on transparent huge pages)
    err = check_overrides(sys.argv[1:])
    if err:
        print(f"archcmp-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = model_overrides(sys.argv[1:])
    from archcmp.training.config_types import check_command

    err = check_command(sys.argv[1:], str(CONF_DIR))  # Hydra's composition errors, in one line
    if err:
        print(f"archcmp-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    import hydra

    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_hydra_task)()


if __name__ == "__main__":
    main()
