"""The jitted training and evaluation steps (functional NNX: split once, merge inside jit)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from archcmp.model.objectives import eval_sums, weighted_sums

TrainState = dict  # {"params": nnx.State, "opt_state": optax state}


def split_microbatches(batch: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
    """[B, ...] -> [A, B/A, ...] for gradient accumulation."""
    # host-side numpy: a plain reshape (einops would probe every installed framework per call)
    return {k: v.reshape((accum, v.shape[0] // accum) + v.shape[1:]) for k, v in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, accum: int,
                    jit_kwargs: dict | None = None) -> Callable:
    """``step(state, batch[A, B/A, ...], dropout_key or None) -> (state, metrics)``.

    Gradients are of the *summed* loss over all micro-batches, divided by the total weight, so
    accumulation gives the same update as one big batch. A non-finite loss or gradient leaves
    the state unchanged and reports ``finite=False`` (the loop then stops with a clear message).
    """
    # jit_kwargs: in/out shardings on a device mesh (archcmp.distributed.sharding.Placement); none on one device.
    return jax.jit(train_step_fn(graphdef, tx, accum), donate_argnums=(0,), **(jit_kwargs or {}))


def make_stacked_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, accum: int) -> Callable:
    """k models in one program (``train.num_seeds``): the step of :func:`make_train_step` vmapped over
    a leading member axis of the state, the batch ``[k, A, B/A, ...]`` and the dropout keys ``[k]``."""
    return jax.jit(jax.vmap(train_step_fn(graphdef, tx, accum)), donate_argnums=(0,))


def train_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, accum: int) -> Callable:
    """The pure (unjitted) training step of one model; see :func:`make_train_step`."""

    def micro(params, mb, key):
        def loss_sum(p):
            logits = nnx.merge(graphdef, p)(mb, dropout_key=key)
            sums = weighted_sums(logits, mb["targets"], mb["weights"])
            return sums["loss_sum"], sums

        (_, sums), grads = jax.value_and_grad(loss_sum, has_aux=True)(params)
        return grads, sums

    def step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array | None):
        params = state["params"]
        keys = None if key is None else jax.random.split(key, accum)

        def body(carry, xs):
            mb, k = xs
            grads, sums = micro(params, mb, k)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        if accum == 1:  # no zero-filled accumulators, no one-trip loop
            grads, sums = micro(params, jax.tree.map(lambda a: a[0], batch), None if keys is None else keys[0])
        else:
            scalar = jnp.zeros((), jnp.float32)
            zero = (jax.tree.map(jnp.zeros_like, params),
                    {"loss_sum": scalar, "correct_sum": scalar, "weight_sum": scalar})
            (grads, sums), _ = jax.lax.scan(body, zero, (batch, keys))
        denom = jnp.maximum(sums["weight_sum"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state}
        loss = sums["loss_sum"] / denom
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics = {"train_loss": loss, "train_accuracy": sums["correct_sum"] / denom,
                   "grad_norm": grad_norm, "param_norm": optax.tree.norm(new["params"]), "finite": finite}
        return new, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, jit_kwargs: dict | None = None) -> Callable:
    """``eval_step(params, batch) -> sums`` of the yardstick and the objective (see objectives)."""
    return jax.jit(_eval_fn(graphdef), **(jit_kwargs or {}))


def make_stacked_eval_step(graphdef: nnx.GraphDef) -> Callable:
    """``eval_step(params[k, ...], batch) -> sums[k]``: k models scored on the same batch."""
    return jax.jit(jax.vmap(_eval_fn(graphdef), in_axes=(0, None)))


def _eval_fn(graphdef: nnx.GraphDef) -> Callable:
    return lambda params, batch: eval_sums(nnx.merge(graphdef, params), batch)


def run_eval(eval_step: Callable, params: Any, batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Sum the per-batch sums on the host and turn them into means."""
    total: dict[str, float] = {}
    for batch in batches:
        for k, v in eval_step(params, batch).items():
            total[k] = total.get(k, 0.0) + float(v)
    return total
