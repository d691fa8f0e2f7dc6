"""``run(command, run_dir)``: one training run (or a ``train.num_seeds=k`` group) from a read command;
``train(cfg, run_dir)`` reads a composed config into that command first.

Data flows one way: config -> task examples -> per-arch formatter -> model -> loss -> tracker.
A run directory holds ``identity.json``, ``.hydra/config.yaml``, ``config.yaml``,
``metrics.jsonl``, ``summary.json`` and ``checkpoints/``. Relaunching the same command resumes
from the last checkpoint, and a run whose summary says ``complete`` is skipped -- both only when
the directory's identity matches the command's settings (:mod:`archcmp.training.identity`), and only by
the one process holding the directory's lock.

:func:`run` only wires the parts together: the command (:mod:`~archcmp.training.command`, the
one reader of the config, with :mod:`~archcmp.training.settings`), the group of members and their directories (:mod:`~archcmp.training.group`), the validated plan
(:mod:`~archcmp.training.plan`), the engine (:mod:`~archcmp.training.ensemble`), the members'
records (:mod:`~archcmp.training.members`) and the step loop (:mod:`~archcmp.training.step_loop`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from archcmp.distributed import hosts
from archcmp.distributed.sharding import make_placement
from archcmp.training import ensemble, finetune
from archcmp.training.command import RunCommand, read_command
from archcmp.training.group import RunGroup, check_placement
from archcmp.training.members import open_members, start_records
from archcmp.training.optim import make_optimizer, schedule
from archcmp.training.plan import RunPlan, plan_run
from archcmp.training.settings import RunSettings
from archcmp.training.step_loop import run_steps


def train(cfg: Any, run_dir: str | Path, *, on_accept: Any = None) -> dict:
    """Train one run described by the composed config; returns its summary (also on disk).

    ``train.num_seeds=k > 1`` trains the members seed..seed+k-1 together in one vmapped step
    (see :mod:`archcmp.training.ensemble`), each with its own run directory ``run_dir/<member run_name>/``;
    the result is then the group's summary with the members' summaries under ``"members"``.

    Before anything is written, every run directory is locked (one writer) and its recorded
    identity compared with this config's (:mod:`archcmp.training.identity`); a mismatch raises
    :class:`archcmp.training.identity.RunRefused` and leaves the directory untouched. ``on_accept(run_dir)``
    is called once the run is validated and its directories claimed (when the command carries the
    command line's ``.hydra/`` record, it is written there then).
    """
    return run(read_command(cfg), run_dir, on_accept=on_accept)


def run(command: RunCommand, run_dir: str | Path, *, on_accept: Any = None) -> dict:
    """Train what ``command`` asks for (:func:`train` says how); the config itself is not read here."""
    s = command.settings
    # Devices and processes first (nothing compiles yet): in a multi-process run only process 0
    # writes the run records, so only process 0 claims the directories and checks their identity.
    hosts.start(s.device, s.distributed)
    group = RunGroup.of(command, Path(run_dir), hosts.is_primary())
    with group.claimed(s.train.overwrite) as idents:
        if s.finetune is not None:
            return group.result(finetune.run(group, idents, on_accept))
        previous = group.previous()
        if s.train.skip_complete and all(p.get("status") == "complete" for p in previous):
            return group.result([{**p, "skipped": True} for p in previous])
        hosts.quiet_libraries()
        plan = plan_run(s, command.shape, [m.seed for m in group.settings])  # validated before anything compiles
        group = group.with_train(plan.train)
        place = make_placement(s.mesh, batch_size=plan.train.batch_size, grad_accum=plan.train.grad_accum,
                               eval_batch_size=plan.train.eval_batch_size)
        check_placement(group.k, place)
        group.accept(on_accept)
        states, engine, lr_at = _initial_states(s, plan, place, group)
        group.write_records(idents)  # validated: the directories now belong to these settings
        members, step = open_members(group, plan, states)
        state = engine.combine(states)  # k > 1: stacked on a leading member axis
        start_records(members, group, plan, place.describe(), step)
        return group.result(run_steps(members, engine, state, plan, step, lr_at))


def _initial_states(s: RunSettings, plan: RunPlan, place: Any, group: RunGroup) -> tuple[list, Any, Any]:
    """Every member's parameters and optimizer state, initialised exactly as its own num_seeds=1 run
    would be (placed on the mesh, if any); the engine that steps them; the learning-rate schedule."""
    from flax import nnx

    from archcmp.model.models import build_model

    tx = make_optimizer(s.optim, plan.total_steps)
    states = []
    for m in group.settings:
        graphdef, params = nnx.split(build_model(plan.model_cfg, m.seed))
        states.append(place.put({"params": params, "opt_state": tx.init(params)}))
    engine = ensemble.make_engine(group.k, graphdef, tx, plan.train.grad_accum, place, states[0])
    return states, engine, schedule(s.optim, plan.total_steps)
