"""``train.num_seeds=k``: k models of the same shape trained together in one jitted, vmapped step.

Member i is the run ``seed=seed+i`` would be on its own: its own initialisation, its own data
order, its own run directory (:mod:`archcmp.training.group` holds the members' settings and
directories). This module holds the step engines and the resume rule of a group.

The step loop (:func:`archcmp.training.step_loop.run_steps`) is the same for every k; it talks to an engine:
:class:`Single` (k=1: the unchanged jitted step, sharded on a mesh if there is one) or
:class:`Stacked` (k>1: parameters, optimizer state, batches and dropout keys stacked on a leading
member axis, ``jax.vmap`` of the same step function; one device, one process).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from archcmp.model.config import ConfigError


# ---- resume ---------------------------------------------------------------------------------------
def resume_step(ckpts: list) -> int | None:
    """The step to resume from: the newest checkpoint (k=1; an unreadable one falls back to an
    older one in ``restore``) or the newest step every member has saved intact (k>1; with at least
    two checkpoints kept, a run killed between the members' saves still has one). For k>1 a step
    that any member holds damaged (its files no longer match the digest written at save time) is
    passed over with one warning naming it and the step used; when no common step is intact, the
    error names the directory and ``train.resume=false``."""
    if len(ckpts) == 1:
        return ckpts[0].latest_step()
    saved = [set(c.all_steps()) for c in ckpts]
    common = set.intersection(*saved)
    damaged: dict[int, str] = {}
    for c in ckpts:
        for s, why in c.damaged_steps().items():
            if s in common and s not in damaged:
                damaged[s] = f"{c.directory / str(s)}: {why}"
    usable = common - set(damaged)
    if damaged and max(common) in damaged:
        newest = max(common)
        if not usable:
            raise ConfigError(f"train.resume=true: no intact checkpoint step common to the {len(ckpts)} members "
                              f"under {Path(ckpts[0].directory).parent.parent} (step {newest} is damaged: "
                              f"{damaged[newest]}); relaunch with train.resume=false to train from the start "
                              "(or train.overwrite=true to keep the old run aside)")
        warnings.warn(f"checkpoint step {newest} is damaged ({damaged[newest]}); every member resumes from "
                      f"step {max(usable)} instead", RuntimeWarning, stacklevel=2)
    if not common and any(saved):
        warnings.warn(f"train.num_seeds={len(ckpts)}: the members have no checkpointed step in common "
                      f"({[sorted(x) for x in saved]}); training all of them from the start", RuntimeWarning,
                      stacklevel=2)
    return max(usable) if usable else None


# ---- engines ---------------------------------------------------------------------------------------
def stack(trees: list) -> Any:
    """Stack k pytrees on a new leading axis (numpy batches stay on the host)."""
    if isinstance(jax.tree.leaves(trees[0])[0], np.ndarray):
        return jax.tree.map(lambda *xs: np.stack(xs), *trees)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class Single:
    """One model: the jitted step of :func:`archcmp.training.steps.make_train_step`, as before."""

    k = 1

    def __init__(self, place: Any, train_step: Callable, eval_step: Callable):
        self.train_step = place.wrap_train(train_step)
        self.eval_step = place.wrap_eval(eval_step)

    def step(self, state: Any, batches: list, keys: list) -> tuple[Any, Any]:
        """Dispatch one step; -> (new state, metrics still on the device: see :meth:`read`)."""
        return self.train_step(state, batches[0], keys[0])

    def read(self, metrics: Any) -> list[dict]:
        """Wait for the step and fetch its metrics: one dict per member."""
        return [jax.device_get(metrics)]

    def sums(self, params: Any, batches: list) -> list[dict[str, float]]:
        from archcmp.training.steps import run_eval

        return [run_eval(self.eval_step, params, batches)]

    def combine(self, states: list) -> Any:
        return states[0]

    def member(self, state: Any, i: int) -> Any:
        return state


class Stacked:
    """k models: one vmapped step over stacked state, batches ``[k, A, B/A, ...]`` and keys ``[k]``."""

    def __init__(self, k: int, train_step: Callable, eval_step: Callable):
        self.k, self.train_step, self.eval_step = k, train_step, eval_step

    def step(self, state: Any, batches: list, keys: list) -> tuple[Any, Any]:
        key = None if keys[0] is None else jnp.stack(keys)
        return self.train_step(state, stack(batches), key)

    def read(self, metrics: Any) -> list[dict]:
        m = jax.device_get(metrics)
        return [{name: v[i] for name, v in m.items()} for i in range(self.k)]

    def sums(self, params: Any, batches: list) -> list[dict[str, float]]:
        """Per-member sums over the batches (the arithmetic of :func:`archcmp.training.steps.run_eval`)."""
        totals: list[dict[str, float]] = [{} for _ in range(self.k)]
        for batch in batches:
            for name, v in jax.device_get(self.eval_step(params, batch)).items():
                for total, x in zip(totals, v):
                    total[name] = total.get(name, 0.0) + float(x)
        return totals

    def combine(self, states: list) -> Any:
        return stack(states)

    def member(self, state: Any, i: int) -> Any:
        return jax.tree.map(lambda x: x[i], state)


def make_engine(k: int, graphdef: Any, tx: Any, accum: int, place: Any, state: Mapping) -> Single | Stacked:
    from archcmp.training.steps import make_eval_step, make_stacked_eval_step, make_stacked_train_step, make_train_step

    if k == 1:
        return Single(place, make_train_step(graphdef, tx, accum, place.train_jit_kwargs(state)),
                      make_eval_step(graphdef, place.eval_jit_kwargs(state["params"])))
    return Stacked(k, make_stacked_train_step(graphdef, tx, accum), make_stacked_eval_step(graphdef))
