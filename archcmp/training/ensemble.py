"""``train.num_seeds=k``: k models of the same shape trained together in one jitted, vmapped step.

Member i is the run ``seed=seed+i`` would be on its own: its own initialisation, its own data
order (its own :class:`~archcmp.data.BatchIterator`), its own run directory
``<run_dir>/<member run_name>/`` (``run_name`` re-resolved with the member's seed, e.g.
``decoder-nano-addition-s1``) holding ``.hydra/config.yaml`` (the member as a ``num_seeds=1``
config), ``metrics.jsonl``, ``summary.json`` and ``checkpoints/`` exactly as a plain run has
them. The group directory holds only ``ensemble.json`` (no ``summary.json``, so analysis sees k
ordinary runs).

The training loop (:func:`archcmp.training.loop.train`) is the same for every k; it talks to an engine:
:class:`Single` (k=1: the unchanged jitted step, sharded on a mesh if there is one) or
:class:`Stacked` (k>1: parameters, optimizer state, batches and dropout keys stacked on a leading
member axis, ``jax.vmap`` of the same step function; one device, one process).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from archcmp.model.config import ConfigError

GROUP_FILE = "ensemble.json"


# ---- configuration ------------------------------------------------------------------------------
def member_seeds(seed: int, k: int) -> list[int]:
    return [seed + i for i in range(k)]


def member_configs(cfg: Any, seed: int, k: int) -> list[dict]:
    """Resolved plain configs of the k members: ``seed+i``, ``train.num_seeds=1`` and ``run_name``
    re-resolved with that seed (suffixed ``-s<seed>`` when that does not tell the members apart)."""
    if hasattr(cfg, "_get_node"):
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(cfg, resolve=False)
        raw.pop("hydra", None)

        def resolve(c: dict) -> dict:
            return OmegaConf.to_container(OmegaConf.create(c), resolve=True)
    else:
        raw = copy.deepcopy(dict(cfg))
        resolve = dict
    out = []
    for s in member_seeds(seed, k):
        c = copy.deepcopy(raw)
        c["seed"] = s
        c["train"]["num_seeds"] = 1
        out.append(resolve(c))
    names = [str(c.get("run_name", "run")) for c in out]
    if len(set(names)) < k:
        for c, name in zip(out, names):
            c["run_name"] = f"{name}-s{c['seed']}"
    return out


def check_placement(k: int, place: Any) -> None:
    """The k members share one device: a mesh (several devices or processes) is not supported."""
    if k == 1 or place.trivial:
        return
    import jax

    raise ConfigError(f"train.num_seeds={k}: the members are trained together on one device, but JAX sees "
                        f"{len(jax.devices())} devices in {jax.process_count()} process(es); use train.num_seeds=1 "
                        "on a mesh (or a sweep over seed=), or expose a single device")


def check_budgets(k: int, steps: list[int]) -> int:
    """All members run in lock-step, so their step budgets (and schedules) must agree."""
    if len(set(steps)) > 1:
        raise ConfigError(f"train.num_seeds={k}: the members' step budgets differ ({steps}; "
                            "train.tokens_per_param depends on each seed's batches); use train.steps or train.flops")
    return steps[0]


def write_group_record(run_dir: Path, s: Any, names: list[str], member_cfgs: list[dict]) -> None:
    """``ensemble.json`` in the group directory and ``.hydra/config.yaml`` in every member's.

    A ``summary.json`` an earlier failed attempt left in the group directory (e.g. a config error
    recorded by the command line) is removed: the members hold the run records now.
    """
    from omegaconf import OmegaConf

    from archcmp.tracking.tracker import atomic_write_json, read_summary

    stale = run_dir / "summary.json"
    if stale.exists() and read_summary(run_dir).get("status") != "complete":
        stale.unlink()
    atomic_write_json(run_dir / GROUP_FILE, {
        "num_seeds": s.train.num_seeds, "seeds": member_seeds(s.seed, s.train.num_seeds), "members": names,
        "run_name": s.run_name})
    for name, c in zip(names, member_cfgs):
        (run_dir / name / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(c), run_dir / name / ".hydra" / "config.yaml")


def result(s: Any, summaries: list[dict]) -> dict:
    """What :func:`archcmp.training.loop.train` returns: the run's summary (k=1) or the group's."""
    if len(summaries) == 1:
        return summaries[0]
    order = ("failed", "interrupted", "running", "complete")
    status = min((m.get("status", "running") for m in summaries), key=order.index)
    return {"run_name": s.run_name, "num_seeds": len(summaries), "seeds": [m.get("seed") for m in summaries],
            "status": status, "skipped": all(m.get("skipped") for m in summaries), "members": summaries}


def member_dirs(run_dir: str | Path) -> list[Path]:
    """The run directories of the command's ``run_dir``: itself, or a group's members."""
    run_dir = Path(run_dir)
    if not (run_dir / GROUP_FILE).exists():
        return [run_dir]
    return [run_dir / name for name in json.loads((run_dir / GROUP_FILE).read_text())["members"]]


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
