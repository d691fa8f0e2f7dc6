"""The fine-tuning stage: ``archcmp-train task=sum_parity finetune.from=RUN_DIR finetune.head=last``.

A fine-tuned run starts from a trained run's checkpoint (:func:`archcmp.loading.run.load_run`: its
architecture, size and weights, exactly), attaches a head and trains on a classification task
(:mod:`archcmp.data.downstream`) in the layouts of :mod:`archcmp.data.classify`:

* ``finetune.head=last|mean|first``: a linear classifier (:class:`archcmp.model.heads.ClassifierHead`)
  on the pooled hidden states; which poolings an architecture allows is its ArchSpec's.
* ``finetune.head=generate``: no new parameters; the label is the target token of the task layout
  (the decoder, prefix-LM and encdec generate it, the encoder fills a MASK) under the LM loss.
* ``finetune.aux_lm_weight=λ``: loss = task loss + λ x the architecture's own LM objective on the
  task's inputs (GPT-1, Radford et al. 2018, used λ = 0.5).
* ``finetune.train_backbone=false``: only the classifier head learns (a linear probe).

Run records are those of a training run: the directory is locked and its identity checked by
:func:`archcmp.training.trainer.train` (the identity holds the fine-tune settings and the source's
identity hash and step, so a run is never reused for another source), ``metrics.jsonl``,
``summary.json`` and ``checkpoints/`` (the parameters ``{"backbone", "head"}`` with the optimizer
state and the data position), resume from the last checkpoint, skip when complete.
``train.num_seeds=k`` fine-tunes k members one after another (one compilation); when
``finetune.from`` is a ``num_seeds`` group directory, member ``seed`` starts from the source member
with the same seed.

Summary metrics: ``eval_accuracy`` (the label of held-out validation examples, the same examples for
every architecture), ``majority_baseline`` (the most frequent label's share of those examples),
``accuracy_over_chance`` (their difference), ``eval_loss`` (cross-entropy of the label).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from archcmp.model.config import ConfigError


# ---- the source run ----------------------------------------------------------------------------
def source_dir(source: str, seed: int) -> Path:
    """The run directory member ``seed`` starts from: ``source`` itself, or, for a ``num_seeds`` group
    directory, its member trained with that seed."""
    from archcmp.training.records import GROUP_FILE

    path = Path(source).expanduser()
    if (path / GROUP_FILE).is_file():
        group = json.loads((path / GROUP_FILE).read_text())
        for name, member_seed in zip(group["members"], group["seeds"]):
            if int(member_seed) == int(seed):
                return path / name
        raise ConfigError(f"finetune.from={source!r}: a group of seeds {group['seeds']} has no member with seed={seed}")
    if not (path / "summary.json").is_file():
        raise ConfigError(f"finetune.from={source!r}: not a run directory of archcmp-train (no summary.json "
                          "or ensemble.json)")
    return path


def source_record(src: Path, step: int | None) -> dict:
    """What identifies the starting point: the source run's identity hash and the checkpoint step."""
    from archcmp.loading.run import read_run, saved_steps
    from archcmp.training import identity

    steps = saved_steps(read_run(src))
    if step is None:
        if not steps:
            raise ConfigError(f"finetune.from={str(src)!r}: the run saved no checkpoint to start from")
        step = steps[-1]
    elif step not in steps:
        raise ConfigError(f"finetune.step={step}: no checkpoint of {src} at that step; saved steps: {steps}")
    recorded, exact = identity.recorded_identity(src)
    if recorded is None:
        raise ConfigError(f"finetune.from={str(src)!r}: the run has no identity.json or config.yaml")
    return {"hash": identity.digest(recorded), "step": int(step), "exact": exact}


def with_source(resolved: dict, record: dict) -> dict:
    """The resolved config a fine-tuned run's identity is computed from: the ``finetune`` group with
    the source's record in place of its path (the same source reached by another path is the same
    run; another source is another run)."""
    ft = {k: v for k, v in resolved["finetune"].items() if k != "from"}
    return {**resolved, "finetune": {**ft, "source": record}}


# ---- the loss -----------------------------------------------------------------------------------
def make_loss(gd_backbone: Any, gd_head: Any, head: str, arch: str, aux_weight: float) -> Callable:
    """``loss(params, batch, key) -> (total, sums)``: the task loss (mean over real rows, or over the
    answer tokens for ``generate``) plus ``aux_weight`` x the mean LM loss of ``batch["aux"]`` when
    the batch carries one. ``sums``: ``task_loss``, ``lm_loss``, ``correct`` / ``rows`` (label
    accuracy over real rows) and ``label_loss_sum`` (cross-entropy of the label, summed over rows)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from archcmp.model.heads import pool
    from archcmp.model.objectives import mean_loss

    def loss(params, batch, key):
        backbone = nnx.merge(gd_backbone, params["backbone"])
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        m, labels, rw = batch["main"], batch["labels"], batch["row_weights"]
        if head == "generate":
            logits = backbone(m, dropout_key=keys[0])  # [B, T, V]
            task_loss, _ = mean_loss(logits, m["targets"], m["weights"])
            at_label = jnp.take_along_axis(logits, m["label_pos"][:, None, None], axis=1)[:, 0]  # [B, V]
            target = jnp.take_along_axis(m["targets"], m["label_pos"][:, None], axis=1)[:, 0]  # [B] label tokens
            ce = optax.softmax_cross_entropy_with_integer_labels(at_label, target)
            correct = (jnp.argmax(at_label, axis=-1) == target).astype(jnp.float32)
        else:
            feats = backbone.features(m, dropout_key=keys[0])
            logits = nnx.merge(gd_head, params["head"])(pool(feats, m, head, arch))  # [B, C]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            task_loss = jnp.sum(ce * rw) / jnp.maximum(jnp.sum(rw), 1.0)
            correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        total, lm = task_loss, jnp.zeros((), jnp.float32)
        if "aux" in batch:
            a = batch["aux"]
            lm, _ = mean_loss(backbone(a, dropout_key=keys[1]), a["targets"], a["weights"])
            total = task_loss + aux_weight * lm
        return total, {"task_loss": task_loss, "lm_loss": lm, "correct": jnp.sum(correct * rw),
                       "rows": jnp.sum(rw), "label_loss_sum": jnp.sum(ce * rw)}

    return loss


def make_step(loss: Callable, tx: Any, train_backbone: bool) -> Callable:
    """Jitted ``step(state, batch, key) -> (state, metrics)``; a non-finite loss or gradient leaves
    the state unchanged and reports ``finite=False``."""
    import jax
    import jax.numpy as jnp
    import optax

    def step(state, batch, key):
        params = state["params"]
        if train_backbone:
            (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, key)
            trainable = params
        else:
            def head_only(h):
                return loss({**params, "head": h}, batch, key)
            (_, sums), grads = jax.value_and_grad(head_only, has_aux=True)(params["head"])
            trainable = params["head"]
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trained = optax.apply_updates(trainable, updates)
        new_params = trained if train_backbone else {**params, "head": trained}
        new = {"params": new_params, "opt_state": opt_state}
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(sums["task_loss"]) & jnp.isfinite(sums["lm_loss"]) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new, {**sums, "grad_norm": grad_norm, "finite": finite}

    return jax.jit(step, donate_argnums=(0,))


# ---- the run --------------------------------------------------------------------------------------
def build(src_model: Any, model_cfg: Any, head: str, num_classes: int, seed: int) -> tuple[Any, Any, dict]:
    """(backbone graphdef, head graphdef or None, params ``{"backbone"[, "head"]}``) of a fine-tuned
    model: the source model's parameters as they are, and a new head initialised from ``seed``."""
    from flax import nnx

    from archcmp.model.heads import ClassifierHead

    gd_b, p_b = nnx.split(src_model)
    params = {"backbone": p_b}
    gd_h = None
    if head != "generate":
        gd_h, params["head"] = nnx.split(ClassifierHead(model_cfg.d_model, num_classes, seed))
    return gd_b, gd_h, params


def _check_source(s: Any, loaded: Any, task: Any, T: int, enc_len: int | None) -> None:
    """The task must be readable by the source model: same arch and tokenizer, rows within max_len."""
    src_arch, src_task = loaded.config.arch, loaded.info["task"]
    if src_arch != s.arch:
        raise ConfigError(f"arch={s.arch!r}: the source run finetune.from={s.finetune.source!r} is arch={src_arch!r}; "
                          f"set arch={src_arch}")
    V = loaded.config.vocab_size
    same_vocab = task.tokenizer.vocab_size == V and all(
        task.tokenizer.decode([i]) == src_task.tokenizer.decode([i]) for i in range(V))
    if not same_vocab:
        raise ConfigError(f"task={s.task.name!r}: its tokenizer differs from the source run's ({src_task.name!r}); "
                          "fine-tune on a task with the same tokens")
    if max(T, enc_len or 0) > loaded.config.max_len:
        raise ConfigError(f"task.seq_len={T}: longer than the source model's max_len={loaded.config.max_len}")


def check(s: Any, task: Any) -> None:
    """Config errors a fine-tuned run can know before loading anything."""
    from archcmp.model.archs import arch_spec

    ft, ts = s.finetune, s.train
    if ft.head not in arch_spec(s.arch).finetune_heads:
        raise ConfigError(f"finetune.head={ft.head!r}: not available for arch={s.arch!r}; choose one of "
                          f"{list(arch_spec(s.arch).finetune_heads)}")
    if not hasattr(task, "label_ids"):
        raise ConfigError(f"task={s.task.name!r}: fine-tuning needs a classification task with labels "
                          "(sum_parity, greater, key_present, shakespeare_speech)")
    if ts.tokens_per_param is not None or ts.flops is not None or ts.full_batch:
        raise ConfigError("train.tokens_per_param / train.flops / train.batch_size=full: a fine-tuned run takes "
                          "train.steps and a batch size")
    if ts.grad_accum != 1:
        raise ConfigError(f"train.grad_accum={ts.grad_accum}: fine-tuning takes grad_accum=1")
    if s.model_overrides:
        key = sorted(s.model_overrides)[0]
        raise ConfigError(f"model.{key}={s.model_overrides[key]!r}: a fine-tuned run keeps its source's model")


def run(group: Any, idents: list[dict], on_accept: Any) -> list[dict]:
    """Fine-tune every member of ``group`` (:class:`archcmp.training.group.RunGroup`, each from its
    source in ``group.sources``); returns their summaries. Identity and config are written (with the
    ``idents`` of the claimed directories) once everything is validated."""
    from archcmp.data import make_task

    s = group.command
    previous = group.previous()
    if s.train.skip_complete and all(p.get("status") == "complete" for p in previous):
        return [{**p, "skipped": True} for p in previous]
    try:
        task = make_task(s.task.name, **s.task.params)
    except ValueError as err:
        raise ConfigError(f"task={s.task.name!r}: {err}") from None
    check(s, task)
    group.accept(on_accept)
    group.write_records(idents)
    compiled: dict = {}
    summaries = []
    for i, (m, d, rec) in enumerate(zip(group.settings, group.dirs, group.sources)):
        if m.train.skip_complete and previous[i].get("status") == "complete":
            summaries.append({**previous[i], "skipped": True})
            continue
        summaries.append(_member(m, d, rec, task, compiled))
    return summaries


def _member(s: Any, run_dir: Path, record: dict, task: Any, compiled: dict) -> dict:
    """Fine-tune one member in ``run_dir``; ``compiled`` carries the jitted functions to the next."""
    from archcmp.distributed.hosts import quiet_libraries

    quiet_libraries()
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from archcmp.data import BatchIterator, eval_examples
    from archcmp.data.classify import FinetuneFormatter
    from archcmp.loading.run import load_run
    from archcmp.model.accounting import count_params
    from archcmp.model.archs import arch_spec
    from archcmp.tracking.tracker import JsonlTracker, run_tracker, to_jsonable
    from archcmp.training.checkpoint import Checkpointer
    from archcmp.training.optim import make_optimizer
    from archcmp.training.summary import error_fields

    ft, ts = s.finetune, s.train
    src = source_dir(ft.source, s.seed)
    loaded = load_run(src, record["step"])
    T = s.task.seq_len
    enc_len = (s.task.enc_len or T) if arch_spec(s.arch).encoder_stack else None
    _check_source(s, loaded, task, T, enc_len)
    model_cfg = loaded.config
    label_ids = tuple(int(t) for t in task.label_ids)
    fmt = FinetuneFormatter(s.arch, T, ft.head, label_ids, model_cfg.vocab_size, enc_len, aux=ft.aux_lm_weight > 0)
    eval_fmt = FinetuneFormatter(s.arch, T, ft.head, label_ids, model_cfg.vocab_size, enc_len)
    held_out = eval_examples(task, "validation", T, ts.eval_examples, seed=0)
    if not held_out:
        raise ConfigError(f"task={s.task.name!r}: no validation example fits task.seq_len={T}")
    counts = np.bincount([task.label_of(ex) for ex in held_out], minlength=task.num_classes)
    majority = float(counts.max() / counts.sum())
    eval_set = [eval_fmt([[ex] for ex in held_out[j:j + ts.eval_batch_size]], ts.eval_batch_size)
                for j in range(0, len(held_out), ts.eval_batch_size)]

    gd_b, gd_h, params = build(loaded.model, model_cfg, ft.head, task.num_classes, s.seed)
    tx = make_optimizer(s.optim, ts.steps)
    trainable = params if ft.train_backbone else params["head"]
    state = {"params": params, "opt_state": tx.init(trainable)}
    if not compiled:  # every member has the same shapes: one compilation
        loss = make_loss(gd_b, gd_h, ft.head, s.arch, ft.aux_lm_weight)
        compiled["step"] = make_step(loss, tx, ft.train_backbone)
        compiled["eval"] = jax.jit(lambda p, b: loss(p, b, None)[1])
    data = BatchIterator(task, "train", s.seed, ts.batch_size, fmt, packing=False)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=ts.keep_checkpoints)
    step = 0
    if ts.resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(target=state)
        data.restore(meta["data"])
        step = int(meta["step"])
    resumed_from = step or None
    n_params = count_params(model_cfg).total + (0 if gd_h is None else int(np.prod(params["head"]["kernel"].shape))
                                                + int(np.prod(params["head"]["bias"].shape)))
    base_key = jax.random.key(s.seed) if model_cfg.dropout > 0 else None

    def evaluate(p) -> dict:
        tot: dict[str, float] = {}
        for b in eval_set:
            for k, v in compiled["eval"](p, b).items():
                tot[k] = tot.get(k, 0.0) + float(v)
        acc = tot["correct"] / max(tot["rows"], 1.0)
        return {"eval_accuracy": acc, "eval_loss": tot["label_loss_sum"] / max(tot["rows"], 1.0),
                "majority_baseline": majority, "accuracy_over_chance": acc - majority}

    summary = {
        "arch": s.arch, "size": loaded.info["summary"].get("size", s.size), "task": s.task.name, "objective": "finetune",
        "seed": s.seed, "experiment": s.experiment, "run_name": s.run_name, "steps": ts.steps,
        "batch_size": ts.batch_size, "seq_len": T, "params_total": n_params, "model": model_cfg.to_dict(),
        "finetune": {"head": ft.head, "aux_lm_weight": ft.aux_lm_weight, "train_backbone": ft.train_backbone,
                     "source_run": str(src), "source_step": record["step"], "source_hash": record["hash"],
                     "source_objective": loaded.info["summary"].get("objective"),
                     "source_mlm_replacement": (loaded.info["config"].get("arch") or {}).get("mlm_replacement",
                                                                                            "bert")},
        "resumed_from": resumed_from, "status": "running"}
    status, error, last_eval = "failed", {"error": None, "error_kind": None}, {}
    t0 = time.perf_counter()
    pbar = tqdm(total=ts.steps, initial=step, disable=None if ts.progress else True, unit="step", leave=False)
    tracker = run_tracker(s.logger, run_dir, resume_step=step, name=s.run_name,
                          group=s.logger.group or s.experiment, tags=[s.arch, s.task.name, "finetune"],
                          config=to_jsonable(summary), renew_id=step == 0 and not ts.resume)
    try:
        with tracker:
            while step < ts.steps:
                batch = next(data)
                key = None if base_key is None else jax.random.fold_in(base_key, step)
                state, ms = compiled["step"](state, batch, key)
                if not bool(ms["finite"]):
                    raise FloatingPointError(f"non-finite loss or gradient at fine-tuning step {step + 1}; "
                                             "lower optimizer.lr")
                step += 1
                if step % ts.log_every == 0 or step == ts.steps:
                    tracker.log({"train_loss": float(ms["task_loss"]), "train_lm_loss": float(ms["lm_loss"]),
                                 "train_accuracy": float(ms["correct"]) / max(float(ms["rows"]), 1.0),
                                 "grad_norm": float(ms["grad_norm"])}, step)
                if step % ts.eval_every == 0 or step == ts.steps:
                    last_eval = evaluate(state["params"])
                    tracker.log(last_eval, step)
                if ts.checkpoint_every and (step % ts.checkpoint_every == 0 or step == ts.steps):
                    ckpt.save(step, state, {"step": step, "data": data.state()}, force=True)
                pbar.update(1)
            if not last_eval:
                last_eval = evaluate(state["params"])
            status = "complete"
    except BaseException as exc:  # recorded in the summary, then re-raised
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = error_fields(exc)
        raise
    finally:
        pbar.close()
        ckpt.close()
        position = data.state()
        summary.update({"status": status, **error, "step": step, **last_eval, "eval_metrics": last_eval,
                        "data_fingerprint": position["fingerprint"]["digest"],
                        "examples_seen": position["fingerprint"]["count"],
                        "wall_seconds": time.perf_counter() - t0})
        JsonlTracker(run_dir, record_status=False).log_summary(to_jsonable(summary))
        if status != "complete":
            print(f"archcmp-train: fine-tuning {run_dir} {status} at step {step}", file=sys.stderr)
    return summary

