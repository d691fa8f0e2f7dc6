"""The types of every config group, checked before anything is built or compiled.

One table per group (``arch``, ``size``, ``task``, ``optimizer``, ``train``, ``model``, ``logger``,
``device``, ``mesh``, ``sharding``, ``distributed``, ``finetune``, the top-level keys, and Hydra's launcher node
for ``launcher=``): each key has a type -- a true/false, a positive or non-negative integer or
number, a name from a fixed list, a string, a list of strings -- and a key the table does not know
is refused too (``+train.stepz=3`` is a typo, not a setting). Every failure is a
:class:`archcmp.model.config.ConfigError` whose message starts with the dotted key and the value
(``optimizer.name='sgd': choose one of ['adamw']``), which the CLI prints as one line (exit 2).

The tables say what a value may be; relations between values (b1 < 1, grad_accum divides
batch_size, RoPE needs an even head size, ...) stay with the code that builds the settings
(:mod:`archcmp.training.settings`, :class:`archcmp.config.ModelConfig`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Mapping

Check = Callable[[str, Any], None]


def _error(path: str, value: Any, why: str) -> Exception:
    from archcmp.model.config import ConfigError

    return ConfigError(f"{path}={value!r}: {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- leaf types ----------------------------------------------------------------------------------
def boolean(path: str, v: Any) -> None:
    if not isinstance(v, bool):  # ``no``, ``0``, ``"false"`` are refused, never coerced
        raise _error(path, v, "must be true or false")


def pos_int(path: str, v: Any) -> None:
    if not (_is_int(v) and v > 0):
        raise _error(path, v, "must be a positive integer")


def nonneg_int(path: str, v: Any) -> None:
    if not (_is_int(v) and v >= 0):
        raise _error(path, v, "must be a non-negative integer")


def pos_num(path: str, v: Any) -> None:
    if not (_is_num(v) and v > 0):
        raise _error(path, v, "must be a positive number")


def nonneg_num(path: str, v: Any) -> None:
    if not (_is_num(v) and v >= 0):
        raise _error(path, v, "must be a non-negative number")


def string(path: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        raise _error(path, v, "must be a non-empty string")


def one_of(*options: Any) -> Check:
    def check(path: str, v: Any) -> None:
        if v not in options or isinstance(v, bool) != any(isinstance(o, bool) for o in options if o == v):
            raise _error(path, v, f"choose one of {list(options)}")
    return check


def optional(inner: Check) -> Check:
    def check(path: str, v: Any) -> None:
        if v is not None:
            inner(path, v)
    return check


def either(*checks: Check) -> Check:
    """The first check's message when none accepts the value."""
    def check(path: str, v: Any) -> None:
        errors = []
        for c in checks:
            try:
                c(path, v)
                return
            except ValueError as err:
                errors.append(err)
        raise errors[0]
    return check


def flags(path: str, v: Any) -> None:
    if not isinstance(v, (list, tuple)) or not all(isinstance(f, str) and f.startswith("--") for f in v):
        raise _error(path, v, "must be a list of flags, each starting with '--'")


def mapping(path: str, v: Any) -> None:
    if not isinstance(v, Mapping):
        raise _error(path, v, "must be a mapping of keys to values")


def mesh_size(path: str, v: Any) -> None:
    if not (_is_int(v) and (v >= 1 or v == -1)):
        raise _error(path, v, "must be a positive integer or -1 (all remaining devices)")


def axis_rules(path: str, v: Any) -> None:
    """``sharding.rules``: logical axis -> a mesh axis name, a list of them, or null (names:
    :func:`archcmp.distributed.sharding.parse_mesh`)."""
    mapping(path, v)
    for name, target in v.items():
        ok = target is None or isinstance(target, str) or (
            isinstance(target, (list, tuple)) and all(isinstance(t, str) for t in target))
        if not ok:
            raise _error(f"{path}.{name}", target, "must be a mesh axis name, a list of them, or null")


def any_value(path: str, v: Any) -> None:
    """Checked by the code that owns it (a task's parameters are checked by the task)."""


# ---- model fields: the types of ModelConfig's annotations -----------------------------------------
def _model_field_check(annotation: Any) -> Check:
    hint = annotation
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return optional(_model_field_check(inner[0]))
    if hint is bool:
        return boolean
    if hint is int:
        def integer(path: str, v: Any) -> None:
            if not _is_int(v):
                raise _error(path, v, "must be an integer")
        return integer
    if hint is float:
        return _number
    if typing.get_origin(hint) in (tuple, list):  # e.g. layer_patterns: a list of names
        def names(path: str, v: Any) -> None:
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise _error(path, v, "must be a list of names (strings)")
        return names

    def text(path: str, v: Any) -> None:
        if not isinstance(v, str):
            raise _error(path, v, "must be a name (string)")
    return text


def model_fields() -> dict[str, Check]:
    """``model.FIELD`` -> its type check (value ranges and names: ModelConfig's own validation)."""
    from archcmp.model.config import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    return {f.name: _model_field_check(hints[f.name]) for f in dataclasses.fields(ModelConfig)}


# ---- the groups -----------------------------------------------------------------------------------
def _train() -> dict[str, Check]:
    return {
        "steps": pos_int, "tokens_per_param": optional(pos_num), "flops": optional(pos_num),
        "batch_size": either(pos_int, one_of("full")), "grad_accum": pos_int, "eval_every": pos_int,
        "eval_examples": pos_int, "eval_train_examples": nonneg_int, "eval_batch_size": pos_int,
        "log_every": pos_int, "checkpoint_every": nonneg_int, "keep_checkpoints": pos_int, "resume": boolean,
        "skip_complete": boolean, "overwrite": boolean, "progress": boolean, "num_seeds": pos_int,
        "early_stop": _early_stop}


def _early_stop(path: str, v: Any) -> None:
    """``train.early_stop``: the rule's keys and types (its relations: archcmp.training.early_stop.parse)."""
    if v is None:
        return
    _check_keys(path, v, {"metric": optional(string), "threshold": optional(_number), "hold": pos_int})


def _number(path: str, v: Any) -> None:
    if not _is_num(v):
        raise _error(path, v, "must be a number")


def _unit(path: str, v: Any) -> None:
    if not (_is_num(v) and 0 <= v < 1):
        raise _error(path, v, "must be a number in [0, 1)")


def _open_unit(path: str, v: Any) -> None:
    if not (_is_num(v) and 0 < v < 1):
        raise _error(path, v, "must be a number in (0, 1)")


OPTIMIZERS = ("adamw",)


def _optimizer() -> dict[str, Check]:
    return {"name": one_of(*OPTIMIZERS), "lr": pos_num, "weight_decay": nonneg_num, "b1": _unit, "b2": _unit,
            "eps": pos_num, "warmup_steps": nonneg_int, "min_lr_ratio": nonneg_num, "clip_norm": nonneg_num}


def _arch() -> dict[str, Check]:
    from archcmp.model.config import ARCHS

    from archcmp.data.noising import MLM_REPLACEMENTS

    return {"name": one_of(*ARCHS), "objective": one_of("task", "mlm", "span"),
            "loss_on": optional(one_of("targets", "all")), "mlm_replacement": one_of(*MLM_REPLACEMENTS), "mlm_rate": _open_unit}


FINETUNE_HEADS = ("last", "mean", "first", "generate")


def _finetune() -> dict[str, Check]:
    """``finetune.*`` (archcmp.training.finetune): which run to start from and how to fine-tune it."""
    return {"from": optional(string), "step": optional(pos_int), "head": one_of(*FINETUNE_HEADS),
            "aux_lm_weight": nonneg_num, "train_backbone": boolean}


def _task() -> dict[str, Check]:
    return {"name": string, "label": optional(string), "params": mapping, "seq_len": pos_int,
            "enc_len": optional(pos_int)}


def _device() -> dict[str, Check]:
    from archcmp.distributed.hosts import DTYPES, PLATFORMS

    return {"name": one_of("cpu", "gpu", "tpu"), "platform": one_of(*PLATFORMS), "dtype": one_of(*DTYPES),
            "param_dtype": one_of(*DTYPES), "xla_flags": flags, "libtpu_init_args": flags}


def _distributed() -> dict[str, Check]:
    return {"initialize": one_of("auto", True, False), "coordinator_address": optional(string),
            "num_processes": optional(pos_int), "process_id": optional(nonneg_int)}


def _logger(kind: Any) -> dict[str, Check]:
    keys: dict[str, Check] = {"kind": one_of("none", "jsonl", "wandb")}
    if kind == "wandb":
        keys.update(project=string, entity=optional(string), group=optional(string),
                    mode=one_of("online", "offline", "disabled"))
    return keys


TOP: dict[str, Check] = {"seed": nonneg_int, "experiment_name": string, "run_name": string}
GROUPS = ("arch", "size", "task", "optimizer", "train", "model", "logger", "device", "mesh", "sharding",
          "distributed", "finetune")


def _check_keys(path: str, node: Any, table: Mapping[str, Check], required: tuple[str, ...] = ()) -> None:
    from archcmp.model.config import ConfigError

    if not isinstance(node, Mapping):
        raise _error(path, node, "must be a mapping of keys to values")
    for key in node:
        if key not in table:
            raise ConfigError(f"{path}.{key}={node[key]!r}: unknown key; known keys: {sorted(table)}")
        table[key](f"{path}.{key}", node[key])
    for key in required:
        if key not in node:
            raise ConfigError(f"{path}.{key}: missing; set it on the command line or in conf/{path}/")


def check(cfg: Mapping[str, Any]) -> None:
    """Type-check a resolved (plain) config: every group, every key. Raises ConfigError."""
    from archcmp.model.config import ConfigError

    for key in cfg:
        if key not in TOP and key not in GROUPS:
            raise ConfigError(f"{key}={cfg[key]!r}: unknown top-level key; known keys: {sorted([*TOP, *GROUPS])}")
    for key, c in TOP.items():
        if key in cfg:
            c(key, cfg[key])
    fields = model_fields()
    for group in GROUPS:
        node = cfg.get(group)
        if node is None and group in ("model", "mesh", "sharding", "distributed", "logger", "device", "finetune"):
            continue  # optional groups: their defaults apply
        if group == "model":
            _check_keys("model", node, {k: optional(c) for k, c in fields.items()})
        elif group == "size":
            _check_keys("size", node, {"name": string, "shapes": mapping}, required=("name", "shapes"))
            from archcmp.model.config import ARCHS

            for arch, shape in node["shapes"].items():
                if arch not in ARCHS:
                    raise ConfigError(f"size.shapes.{arch}: unknown architecture; choose among {list(ARCHS)}")
                _check_keys(f"size.shapes.{arch}", shape, fields)
        elif group == "logger":
            _check_keys("logger", node, _logger(node.get("kind") if isinstance(node, Mapping) else None))
        elif group == "mesh":
            _check_keys("mesh", node, {"data": mesh_size, "fsdp": mesh_size, "tensor": mesh_size})
        elif group == "sharding":
            _check_keys("sharding", node, {"rules": optional(axis_rules)})  # names: archcmp.distributed.sharding.parse_mesh
        else:
            table = {"arch": _arch, "task": _task, "optimizer": _optimizer, "train": _train, "device": _device,
                     "distributed": _distributed, "finetune": _finetune}[group]()
            required = {"arch": ("name", "objective"), "task": ("name", "seq_len"),
                        "optimizer": tuple(_optimizer()), "train": tuple(k for k in _train() if k not in (
                            "tokens_per_param", "flops", "eval_train_examples", "overwrite", "early_stop"))}.get(group, ())
            _check_keys(group, node, table, required)


# ---- Hydra's launcher node (launcher=basic|joblib|submitit_slurm) --------------------------------
LAUNCHERS: dict[str, dict[str, Check]] = {
    "joblib": {"n_jobs": pos_int, "backend": one_of("loky", "multiprocessing", "threading"),
               "prefer": optional(one_of("processes", "threads")), "require": optional(one_of("sharedmem")),
               "verbose": nonneg_int, "timeout": optional(pos_num), "pre_dispatch": any_value,
               "batch_size": any_value, "temp_folder": optional(string), "max_nbytes": any_value,
               "mmap_mode": optional(one_of("r+", "r", "w+", "c"))},
    "submitit_slurm": {"timeout_min": pos_int, "cpus_per_task": optional(pos_int), "gpus_per_node": optional(nonneg_int),
                       "tasks_per_node": pos_int, "mem_gb": optional(pos_num), "nodes": pos_int,
                       "array_parallelism": pos_int, "max_num_timeout": nonneg_int, "signal_delay_s": nonneg_int},
}


def check_launcher(launcher: Mapping[str, Any]) -> None:
    """``hydra.launcher.*`` of the joblib and SLURM launchers (the settings archcmp's conf/launcher sets
    or a user is likely to: job counts, time, resources); other keys are Hydra's plugins' own."""
    target = str((launcher or {}).get("_target_", ""))
    kind = "joblib" if "joblib" in target else "submitit_slurm" if "submitit" in target else None
    for key, c in LAUNCHERS.get(kind, {}).items():
        if key in launcher:
            c(f"hydra.launcher.{key}", launcher[key])


# ---- the command line, before Hydra starts ----------------------------------------------------------
def _one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's composition errors (several lines, a hint about HYDRA_FULL_ERROR) as
    one line that starts with the key when the error names one."""
    chain, e = [], err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        key = getattr(e, "full_key", None)
        if key:
            msg = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
            if "not in struct" in msg:
                msg = "unknown key (add it with + only if it is a real setting; see conf/)"
            return f"{key}: {msg}"
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text.replace("Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", "").strip()


def _variants(overrides: list[str]) -> list[list[str]]:
    """The overrides with every sweep (``a,b``, ``range()``, ``choice()``) reduced to one value: the
    first values together, then each other value of each sweep once (not the full product)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = []
    for o in parsed:
        if o.is_sweep_override():
            values.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            values.append([o.input_line])
    base = [v[0] for v in values if v]
    out = [base]
    for i, options in enumerate(values):
        for v in options[1:]:
            out.append([*base[:i], v, *base[i + 1:]])
    return out


def _resolved_or_none(cfg: Any) -> dict | None:
    """The config without Hydra's node, resolved; None when it needs a running job to resolve
    (``${hydra:job.num}`` in a run name): the job checks it then."""
    from omegaconf import OmegaConf

    try:
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation only a job can resolve
        return None


def check_command(argv: list[str], conf_dir: str) -> str | None:
    """One-line message for a command whose config Hydra cannot compose, or whose launcher node has a
    value of the wrong type -- before Hydra prints its multi-line report and before any job starts."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None  # Hydra's own flags (--cfg, --help, --config-name, ...): Hydra handles the command
    overrides = [a for a in argv if not a.startswith("-")]
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        variants = _variants(overrides)
    except Exception as err:  # noqa: BLE001 - a parse error of Hydra's override grammar
        return _one_line(err)
    for variant in variants:
        try:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
                cfg = compose("config", overrides=variant, return_hydra_config=True)
            check_launcher(cfg.hydra.launcher)
            plain = _resolved_or_none(cfg)
            if plain is not None:  # every job of a sweep: each value of each swept key, typed
                check(plain)
        except ValueError as err:
            if type(err).__name__ == "ConfigError":
                return str(err)
            return _one_line(err)
        except Exception as err:  # noqa: BLE001 - Hydra/OmegaConf composition errors
            return _one_line(err)
        finally:
            GlobalHydra.instance().clear()
    return None
