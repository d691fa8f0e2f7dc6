"""Typed config: every key of every config group (every option file in conf/) is checked as a type
before anything is built. The walk below breaks one leaf at a time -- a value of the wrong type --
and requires a ConfigError whose message starts with that leaf's dotted key; an unknown key in any
group is refused by name; the launcher nodes of launcher=joblib / submitit_slurm likewise.
Hydra's own composition errors come out as one line too (``check_command``)."""
import copy
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from archcmp.training import config_types
from archcmp.model.config import ModelConfig
from archcmp.training.settings import ConfigError, parse
from archcmp.training.loop import CONF_DIR
from hydra_cfg import compose_cfg

GROUPS = ("arch", "size", "task", "optimizer", "logger", "device", "launcher", "experiment")


def _options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _plain(overrides):
    return OmegaConf.to_container(compose_cfg(overrides), resolve=True)


def _leaves(tree, prefix=""):
    """(dotted key, value) of every leaf; a task's params are the task's own (tested below)."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path != "task.params":
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _wrong(value):
    """Values of the wrong type for a leaf holding ``value``."""
    if isinstance(value, bool):
        return ["no", 1]
    if isinstance(value, int):
        return ["x", True]
    if isinstance(value, float):
        return ["x", True]
    if isinstance(value, str):
        return [5]
    if value is None:
        return [[1]]
    if isinstance(value, list):  # (a task's [min, max] may also be one int)
        return ["x"]
    if isinstance(value, dict):  # task.params, model: {} and other empty mappings
        return [5]
    raise AssertionError(f"no wrong value for {value!r}")


def _set(tree, path, value):
    node = tree
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value


def _cases():
    for group in GROUPS:
        for option in _options(group):
            yield f"{group}={option}"


@pytest.mark.parametrize("choice", list(_cases()))
def test_every_leaf_of_every_group_option_is_type_checked(choice):
    cfg = _plain([choice] if not choice.startswith("launcher=") else [])
    parse(copy.deepcopy(cfg))  # the option itself is valid
    broken = 0
    for path, value in _leaves(cfg):
        for bad in _wrong(value):
            if path == "train.batch_size":
                continue  # an integer or the word "full": tested below
            trial = copy.deepcopy(cfg)
            _set(trial, path, bad)
            with pytest.raises(ConfigError) as err:
                parse(trial)
            msg = str(err.value)
            assert msg.startswith(path) and "\n" not in msg, (path, bad, msg)
            broken += 1
    assert broken > 60, broken  # the walk reached the leaves


@pytest.mark.parametrize("group", ["arch", "size", "task", "optimizer", "train", "model", "logger", "device",
                                   "mesh", "sharding", "distributed", "size.shapes.decoder"])
def test_unknown_keys_are_refused_in_every_group(group):
    cfg = _plain(["logger=wandb"])
    node = cfg
    for part in group.split("."):
        node = node[part]
    node["zzz_typo"] = 1
    with pytest.raises(ConfigError, match=rf"^{group}\.zzz_typo=1: unknown key; known keys: \["):
        parse(cfg)


def test_unknown_top_level_key_is_refused():
    cfg = _plain([])
    cfg["foo"] = 1
    with pytest.raises(ConfigError, match=r"^foo=1: unknown top-level key"):
        parse(cfg)


@pytest.mark.parametrize("field", [f.name for f in __import__("dataclasses").fields(ModelConfig)])
def test_every_model_field_is_typed_as_model_dot_field(field):
    """``model.FIELD=`` with a value of the wrong type: a config error naming the field."""
    default = getattr(ModelConfig(), field)
    for bad in _wrong(default if default is not None else 1) + (["x"] if default is None else []):
        cfg = _plain([])
        cfg["model"] = {field: bad}
        with pytest.raises(ConfigError) as err:
            parse(cfg)
        assert str(err.value).startswith(f"model.{field}="), (bad, str(err.value))


@pytest.mark.parametrize("value, ok", [(["local", "dense"], True), ("local", False), ([1, "dense"], False)])
def test_layer_patterns_is_a_list_of_names(value, ok):
    """``model.layer_patterns=[local,dense]`` passes the type check (ModelConfig checks the names)."""
    cfg = _plain([])
    cfg["model"] = {"layer_patterns": value}
    if ok:
        parse(cfg)
    else:
        with pytest.raises(ConfigError, match=r"^model\.layer_patterns="):
            parse(cfg)


@pytest.mark.parametrize("value, ok", [("full", True), (8, True), ("x", False), (0, False), (True, False)])
def test_batch_size_is_a_positive_integer_or_full(value, ok):
    cfg = _plain([])
    cfg["train"]["batch_size"] = value
    if ok:
        parse(cfg)
    else:
        with pytest.raises(ConfigError, match=r"^train.batch_size="):
            parse(cfg)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_slurm"])
def test_launcher_settings_are_typed(launcher):
    node = OmegaConf.to_container(compose_cfg([f"launcher={launcher}"], return_hydra_config=True).hydra.launcher,
                                  resolve=False)
    config_types.check_launcher(node)
    table = config_types.LAUNCHERS[launcher]
    checked = 0
    for key in table:
        if key not in node or key in ("pre_dispatch", "batch_size", "max_nbytes"):  # joblib's own formats
            continue
        for bad in _wrong(node[key]) + ([0] if isinstance(node[key], int) else []):
            if key in ("verbose", "gpus_per_node", "max_num_timeout", "signal_delay_s") and bad == 0:
                continue  # zero is a valid count there
            trial = {**node, key: bad}
            checked += 1
            with pytest.raises(ConfigError, match=rf"^hydra.launcher.{key}="):
                config_types.check_launcher(trial)
    assert checked >= 10, checked


@pytest.mark.parametrize("task", _options("task"))
def test_every_task_parameter_is_checked_by_its_task(task):
    """task.params.*: a wrong type for any parameter of any task file -> ValueError naming it (the
    trainer turns it into a config error before anything is built)."""
    from archcmp.data import make_task

    params = _plain([f"task={task}"])["task"]["params"]
    name = _plain([f"task={task}"])["task"]["name"]
    for key, value in params.items():
        for bad in _wrong(value):
            try:
                make_task(name, **{**params, key: bad})
            except ValueError as err:
                assert key in str(err), (key, bad, str(err))
            else:
                raise AssertionError(f"task={task}: task.params.{key}={bad!r} was accepted")


@pytest.mark.parametrize("argv, start", [
    (["train.stepz=3"], "train.stepz: unknown key"),
    (["task.enc_len=abc"], "task.enc_len: unknown key"),
    (["-m", "launcher=joblib", "hydra.launcher.n_jobs=abc"], "hydra.launcher.n_jobs: Value 'abc'"),
    (["-m", "launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: must be a positive integer"),
    (["-m", "launcher=joblib", "hydra.launcher.prefer=zzz"], "hydra.launcher.prefer='zzz'"),
    (["-m", "optimizer.lr=1e-3,abc"], "optimizer.lr='abc': must be a positive number"),
    (["-m", "seed=0,1", "train.resume=0,no"], "train.resume=0: must be true or false"),
    (["+train.stepz=3"], "train.stepz=3: unknown key"),
])
def test_the_command_is_checked_in_one_line_before_hydra_starts(argv, start):
    msg = config_types.check_command(argv, str(CONF_DIR))
    assert msg is not None and msg.startswith(start) and "\n" not in msg, msg
    assert config_types.check_command(["-m", "seed=0,1", "optimizer.lr=1e-3,3e-3"], str(CONF_DIR)) is None
