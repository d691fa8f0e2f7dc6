"""Run names that tell a sweep's jobs apart when the name template hides what the sweep varies.

The default run name ``<arch>-<size>-<task>-s<seed>`` does not show, say, the learning rate; a sweep
``optimizer.lr=1e-3,3e-3`` would send both jobs to one directory (the second refused by its
identity, :mod:`archcmp.training.identity`). Here every key a sweep varies that the run-name template does
not mention, and that can change the result (identity's rules: not the logger, launcher or
bookkeeping switches), is appended to the name as ``-<last key part><value>``:
``decoder-nano-addition-s0-lr0.003``. The names stay readable and deterministic, so relaunching
the same sweep finds the same directories.

The sweep callback (:class:`archcmp.training.sweep.SweepReport`) finds the varied keys when the multirun
starts -- the command line's sweeps (``a,b``, ``range()``, ...) and the experiment's
``hydra.sweeper.params`` with more than one value -- and hands them to the jobs (also joblib's
worker processes) in the environment variable ``ARCHCMP_SWEPT_KEYS``. ``conf/config.yaml`` names
each job's directory ``${run_name}${archcmp.swept:}``; the job's ``run_name`` gets the same suffix.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

SWEPT_ENV = "ARCHCMP_SWEPT_KEYS"
RESOLVER = "archcmp.swept"
# A template reading one of these already names every job of a sweep apart (``run_name=r${hydra:job.num}``).
PER_JOB_REFS = {"job.num", "job.id", "job.override_dirname", "hydra.job.num", "hydra.job.id",
                "hydra.job.override_dirname"}
GROUP_KEYS = ("arch", "size", "task", "optimizer", "logger", "launcher", "device", "experiment")


def _key(override: Any) -> str:
    return override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"


def swept_keys(task_overrides: Iterable[str], sweeper_params: Mapping[str, Any] | None) -> list[str]:
    """Keys with more than one value in this multirun (command line and ``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = list(task_overrides) + [f"{k}={v}" for k, v in (sweeper_params or {}).items()]
    keys = []
    for o in OverridesParser.create().parse_overrides(lines):
        if o.is_sweep_override() and len(list(o.sweep_string_iterator())) > 1:
            keys.append(_key(o))
    return list(dict.fromkeys(keys))


def _relevant(key: str) -> bool:
    """Whether a key can change a run's numbers (archcmp.training.identity's rules)."""
    from archcmp.training.identity import IGNORED_TOP, IGNORED_TRAIN

    top = key.split(".")[0].split("/")[0]
    if top in IGNORED_TOP or top == "launcher":
        return False
    return not (top == "train" and key.split(".")[1:2] and key.split(".")[1] in IGNORED_TRAIN)


def template_references(template: str) -> set[str]:
    """Dotted config keys a run-name template reads (``${arch.name}``, ``${oc.select:task.label,..}``)."""
    refs = set()
    for inner in re.findall(r"\$\{([^${}]*)", template):
        inner = re.sub(r"^[\w.]+:", "", inner)  # a resolver's name (oc.select:)
        refs.update(re.findall(r"[A-Za-z_]\w*(?:\.\w+)*", inner))
    return refs


def _shown(key: str, refs: set[str]) -> bool:
    return any(r == key or r.startswith(key + ".") or key.startswith(r + ".") for r in refs)


def _flat_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_flat_text(v) for v in value)
    return str(value)


def _text(value: Any) -> str:
    """A value as a directory-name part: [1, 3] -> 1-3; odd characters -> _; longer than 24 -> a hash."""
    text = re.sub(r"[^A-Za-z0-9._+-]", "_", _flat_text(value))
    if len(text) > 24:
        import hashlib

        text = hashlib.sha256(text.encode()).hexdigest()[:8]
    return text


def suffix(cfg: Any, template: str, choices: Mapping[str, Any], swept: Iterable[str]) -> str:
    """``-lr0.003``-style parts for the swept, result-relevant keys the template does not show.

    ``cfg``: the job's config (OmegaConf); ``choices``: Hydra's group choices (``hydra.runtime.choices``)."""
    from omegaconf import OmegaConf

    refs = template_references(template)
    if refs & PER_JOB_REFS:
        return ""
    hidden = [k for k in swept if _relevant(k) and not _shown(k.split("@")[0], refs)]
    shorts = [k.split("@")[0].split(".")[-1] for k in hidden]
    parts = []
    for key, short in zip(hidden, shorts):
        name = key if shorts.count(short) > 1 else short  # two keys ending alike: the whole key
        if key in GROUP_KEYS:
            value = choices.get(key)
        else:
            value = OmegaConf.select(cfg, key.split("@")[0], default=None)
        if hasattr(value, "_get_node"):
            value = OmegaConf.to_container(value, resolve=True)
        parts.append(f"-{name}{_text(value)}")
    return "".join(parts)


def env_swept() -> list[str]:
    return [k for k in os.environ.get(SWEPT_ENV, "").split() if k]


def sweep_group(sweep_dir_name: str, swept: Iterable[str]) -> str:
    """The wandb group of a sweep's jobs when no ``logger.group`` / ``experiment_name`` names one: the
    sweep folder and the keys the sweep varies (``default sweep over arch, seed``) -- the same on a
    relaunch of the same sweep, apart for sweeps over other keys."""
    swept = list(swept)
    return f"{sweep_dir_name} sweep over {', '.join(swept)}" if swept else f"{sweep_dir_name} sweep"


def _resolve(*, _root_: Any) -> str:
    """The ``${archcmp.swept:}`` resolver: the suffix of this job (empty outside a sweep)."""
    from omegaconf import OmegaConf

    swept = env_swept()
    if not swept:
        return ""
    template = run_name_template(_root_) if "run_name" in _root_ else ""
    choices = OmegaConf.to_container(_root_.hydra.runtime.choices) if "hydra" in _root_ else {}
    return suffix(_root_, template, choices, swept)


def run_name_template(cfg: Any) -> str:
    """The unresolved ``run_name`` of a job's config (``${arch.name}-...``)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.to_container(cfg, resolve=False).get("run_name", ""))


def register() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve)


def tracker_group(group: str | None, experiment: str) -> str:
    """A run's tracker group (wandb): ``logger.group``, else ``experiment_name``, else (a sweep left
    at ``default``) the sweep directory's name and the keys it varies."""
    group = group or (experiment if experiment != "default" else None)
    if group is not None:
        return group
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return sweep_group(Path(hc.sweep.dir).name, env_swept()) if hc.mode == RunMode.MULTIRUN else experiment
    except ValueError:  # not under Hydra
        return experiment
