"""What one ``archcmp-train`` command asks for, read from the composed config once.

:func:`read_command` is the only place below the command line that reads the config itself: it
validates it into typed settings (:func:`archcmp.training.settings.parse`), works out the members of
a ``train.num_seeds=k`` group (each its own seed and ``run_name``) and keeps each member's config as
plain resolved values (what its identity, ``config.yaml`` and tracker are made of). Everything
after it -- the group, the plan, the engines, the step loop -- takes the :class:`RunCommand`, never
the config.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from archcmp.training.records import resolved
from archcmp.training.settings import RunSettings, parse


@dataclass(frozen=True)
class RunCommand:
    settings: RunSettings             # the command's own (k > 1: the group's seed and run_name)
    shape: dict                       # the size's shape for this arch
    members: tuple[RunSettings, ...]  # one per member: its own seed and run_name (k = 1: the command's)
    configs: tuple[dict, ...]         # each member's config as plain resolved values, without Hydra's node
    hydra_record: Mapping[str, str] | None = None  # ``.hydra/`` file name -> text, written once the directory is claimed


def read_command(config: Any, hydra_record: Mapping[str, str] | None = None) -> RunCommand:
    """The command in ``config`` (a composed config, or the same as plain containers with its
    interpolations unresolved), validated. ``hydra_record``: the command line's ``.hydra/`` files."""
    from omegaconf import OmegaConf

    node = OmegaConf.create(config) if not hasattr(config, "_get_node") else config
    s, shape = parse(node)
    k = s.train.num_seeds
    configs = [resolved(node)] if k == 1 else member_configs(node, s.seed, k)
    members = [s] if k == 1 else [parse(c)[0] for c in configs]
    return RunCommand(s, shape, tuple(members), tuple(configs), hydra_record)


def member_configs(cfg: Any, seed: int, k: int) -> list[dict]:
    """Resolved plain configs of the k members of the composed ``cfg``: ``seed+i``,
    ``train.num_seeds=1`` and ``run_name`` re-resolved with that seed (suffixed ``-s<seed>`` when
    that does not tell the members apart)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    out = []
    for s in range(seed, seed + k):
        c = copy.deepcopy(raw)
        c["seed"] = s
        c["train"]["num_seeds"] = 1
        out.append(OmegaConf.to_container(OmegaConf.create(c), resolve=True))
    names = [str(c.get("run_name", "run")) for c in out]
    if len(set(names)) < k:
        for c, name in zip(out, names):
            c["run_name"] = f"{name}-s{c['seed']}"
    return out
