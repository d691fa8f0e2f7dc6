"""From a composed Hydra config to validated, frozen run settings.

Every check here runs before JAX traces anything, and every error names the offending key
and value (``train.steps=-1: must be a positive integer``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from archcmp.model.config import ARCHS, ConfigError, ModelConfig
from archcmp.training import early_stop
from archcmp.training.early_stop import EarlyStop
from archcmp.distributed.hosts import parse_device, parse_distributed
from archcmp.distributed.sharding import parse_mesh
from archcmp.tracking.tracker import LoggerSettings


def _get(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if node is None or part not in node:
            raise ConfigError(f"{path}: missing; set it on the command line or in conf/")
        node = node[part]
    return node


def _pos_int(cfg, path: str, allow_zero: bool = False) -> int:
    value = _get(cfg, path)
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{path}={value!r}: must be a {'non-negative' if allow_zero else 'positive'} integer")
    return value


def _bool(cfg, path: str) -> bool:
    """A real true/false: Hydra reads ``true``/``false`` as bools, so any other value (``no``, ``0``,
    ``"false"``) is refused rather than coerced (``bool("no")`` is True)."""
    value = _get(cfg, path)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}={value!r}: must be true or false")
    return value


LOGGER_KINDS = ("none", "jsonl", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
DEVICE_NAMES = ("cpu", "gpu", "tpu")


def _pos_float(cfg, path: str, allow_zero: bool = False) -> float:
    value = _get(cfg, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path}={value!r}: must be a {'non-negative' if allow_zero else 'positive'} number")
    return float(value)


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int
    eval_every: int
    eval_examples: int
    eval_batch_size: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    resume: bool
    skip_complete: bool
    progress: bool
    num_seeds: int
    overwrite: bool = False  # move an existing run with other settings aside (archcmp.training.identity)
    tokens_per_param: float | None = None
    flops: float | None = None
    eval_train_examples: int = 0  # training examples also scored at each evaluation (0 = off)
    full_batch: bool = False  # train.batch_size=full: every step is the whole training split
    early_stop: EarlyStop | None = None  # train.early_stop (archcmp.training.early_stop); None: train to steps


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    warmup_steps: int
    min_lr_ratio: float
    clip_norm: float


@dataclass(frozen=True)
class TaskSettings:
    name: str
    params: dict
    seq_len: int
    enc_len: int | None = None


@dataclass(frozen=True)
class FinetuneSettings:
    """``finetune.*``: start from the run in ``source`` (its checkpoint ``step``, None = the newest),
    put a ``head`` on it (last / mean / first hidden state -> a linear classifier, or ``generate``:
    the label as target tokens under the LM head) and train on the task; ``aux_lm_weight`` λ adds
    λ x the architecture's own LM objective on the task's inputs (GPT-1's auxiliary loss)."""

    source: str
    step: int | None = None
    head: str = "last"
    aux_lm_weight: float = 0.0
    train_backbone: bool = True


@dataclass(frozen=True)
class RunSettings:
    seed: int
    arch: str
    size: str
    objective: str
    loss_on: str | None
    experiment: str
    run_name: str
    task: TaskSettings
    train: TrainSettings
    optim: OptimSettings
    logger: LoggerSettings = field(default_factory=LoggerSettings)
    model_overrides: dict = field(default_factory=dict)
    reference_shape: dict = field(default_factory=dict)  # the size's decoder shape (token budgets)
    # Scale-out (archcmp.distributed.sharding / archcmp.distributed.hosts); None = one device, the cpu preset.
    mesh: Any = None
    device: Any = None
    distributed: Any = None
    mlm_replacement: str = "bert"  # arch.mlm_replacement (objective=mlm): "bert" 80/10/10 or "mask"
    mlm_rate: float = 0.15  # arch.mlm_rate (objective=mlm): share of the tokens chosen, in (0, 1)
    finetune: FinetuneSettings | None = None  # set when finetune.from names a run

    def reference_config(self, vocab_size: int) -> ModelConfig:
        """The size's *decoder* (whatever this run's arch): what ``train.tokens_per_param`` counts
        parameters of, so every architecture of a size gets the same token budget."""
        return dataclasses.replace(self.model_config(vocab_size, self.reference_shape), arch="decoder")

    def model_config(self, vocab_size: int, shape: Mapping[str, Any]) -> ModelConfig:
        """The model of this run: the size's shape for this arch, the task's vocabulary and
        length, then any ``model.*`` overrides."""
        values = dict(shape)
        values.update(arch=self.arch, vocab_size=vocab_size,
                      max_len=max(self.task.seq_len, self.task.enc_len or 0))
        values.setdefault("pos_encoding", "rope")
        if self.device is not None:  # the device preset's dtypes; model.* overrides still win
            values.update(dtype=self.device.dtype, param_dtype=self.device.param_dtype)
        values.update(self.model_overrides)
        return ModelConfig.from_mapping(values)


def parse_logger(cfg: Mapping[str, Any]) -> LoggerSettings:
    """The logger group, typed: kind, and for wandb the project/entity/group strings and the mode."""
    logger = dict(cfg.get("logger") or {"kind": "jsonl"})
    if logger.get("kind") not in LOGGER_KINDS:
        raise ConfigError(f"logger.kind={logger.get('kind')!r}: choose one of {list(LOGGER_KINDS)}")
    known = {"kind"} | ({"project", "entity", "mode", "group"} if logger["kind"] == "wandb" else set())
    for key in sorted(set(logger) - known):
        raise ConfigError(f"logger.{key}={logger[key]!r}: unknown key for logger={logger['kind']}; "
                          f"known keys: {sorted(known)}")
    if logger["kind"] == "wandb":
        if logger.get("mode", "offline") not in WANDB_MODES:
            raise ConfigError(f"logger.mode={logger.get('mode')!r}: choose one of {list(WANDB_MODES)}")
        for key in ("project", "entity", "group"):
            if logger.get(key) is not None and not isinstance(logger[key], str):
                raise ConfigError(f"logger.{key}={logger[key]!r}: must be a string")
    if logger["kind"] != "wandb":
        return LoggerSettings(kind=logger["kind"])
    return LoggerSettings(kind="wandb", project=logger.get("project", "archcmp"), entity=logger.get("entity"),
                          mode=logger.get("mode", "offline"), group=logger.get("group"))


def parse_launcher(hydra_launcher: Mapping[str, Any]) -> None:
    """Hydra's launcher node (``launcher=`` group): local parallel job count must be a positive int."""
    n_jobs = hydra_launcher.get("n_jobs") if hydra_launcher else None
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1):
        raise ConfigError(f"hydra.launcher.n_jobs={n_jobs!r}: must be a positive integer")


def parse_finetune(cfg: Mapping[str, Any]) -> FinetuneSettings | None:
    """The ``finetune`` group (types checked by config_types): None unless ``finetune.from`` is set."""
    node = cfg.get("finetune") or {}
    if node.get("from") is None:
        return None
    out = FinetuneSettings(source=str(node["from"]), step=node.get("step"), head=node.get("head", "last"),
                           aux_lm_weight=float(node.get("aux_lm_weight", 0.0)),
                           train_backbone=bool(node.get("train_backbone", True)))
    if out.head == "generate" and not out.train_backbone:
        raise ConfigError("finetune.train_backbone=False: finetune.head=generate has no head of its own, "
                          "so nothing would be trained; use a classifier head (last, mean, first)")
    return out


def parse(cfg: Mapping[str, Any], typed: bool = True) -> tuple[RunSettings, dict]:
    """Validate the composed config. Returns (settings, the size's shape for this arch).

    ``typed``: first check every group's keys and value types (:mod:`archcmp.config_types`); off only
    for reading back the records of runs made by older versions (keys since renamed or added)."""
    from omegaconf import OmegaConf

    from archcmp.training import config_types

    if hasattr(cfg, "_get_node"):
        raw = OmegaConf.to_container(cfg, resolve=False)
        raw.pop("hydra", None)  # Hydra's own node is resolved by Hydra, not by us
        for group in ("arch", "size", "task", "optimizer"):
            if raw.get(group) is None:
                raise ConfigError(f"{group}: missing; choose one with {group}=NAME (see conf/{group}/)")
        cfg = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    if cfg.get("task") is None:
        raise ConfigError("task: missing; choose one with task=NAME (see conf/task/)")
    if typed:
        config_types.check(cfg)
    arch = _get(cfg, "arch.name")
    if arch not in ARCHS:
        raise ConfigError(f"arch={arch!r}: unknown architecture; choose one of {list(ARCHS)}")
    shapes = _get(cfg, "size.shapes")
    if arch not in shapes:
        raise ConfigError(f"size={_get(cfg, 'size.name')!r}: has no shape for arch={arch!r}")
    seed = _get(cfg, "seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r}: must be a non-negative integer")

    t = "train"
    # train.batch_size=full: one row per training example, the whole (finite) split every step; the
    # number of rows is the split's size, known once the task is built (train() fills it in).
    full_batch = _get(cfg, f"{t}.batch_size") == "full"
    train = TrainSettings(
        steps=_pos_int(cfg, f"{t}.steps"), batch_size=1 if full_batch else _pos_int(cfg, f"{t}.batch_size"),
        grad_accum=_pos_int(cfg, f"{t}.grad_accum"), eval_every=_pos_int(cfg, f"{t}.eval_every"),
        eval_examples=_pos_int(cfg, f"{t}.eval_examples"), eval_batch_size=_pos_int(cfg, f"{t}.eval_batch_size"),
        log_every=_pos_int(cfg, f"{t}.log_every"), checkpoint_every=_pos_int(cfg, f"{t}.checkpoint_every", True),
        keep_checkpoints=_pos_int(cfg, f"{t}.keep_checkpoints"), resume=_bool(cfg, f"{t}.resume"),
        skip_complete=_bool(cfg, f"{t}.skip_complete"), progress=_bool(cfg, f"{t}.progress"),
        num_seeds=_pos_int(cfg, f"{t}.num_seeds"),
        overwrite=_bool(cfg, f"{t}.overwrite") if "overwrite" in cfg["train"] else False)
    budgets = {}
    for key in ("tokens_per_param", "flops"):
        if cfg["train"].get(key) is not None:
            budgets[key] = _pos_float(cfg, f"{t}.{key}")
    if len(budgets) > 1:
        raise ConfigError(f"train.tokens_per_param={budgets['tokens_per_param']!r} and train.flops={budgets['flops']!r}: "
                          "set at most one budget")
    if cfg["train"].get("eval_train_examples") is not None:  # optional: older run configs lack it
        budgets["eval_train_examples"] = _pos_int(cfg, f"{t}.eval_train_examples", True)
    train = dataclasses.replace(train, full_batch=full_batch, **budgets)
    train = dataclasses.replace(train, early_stop=early_stop.parse(cfg["train"].get("early_stop"),
                                                                   train.eval_train_examples))
    if full_batch and train.grad_accum != 1:
        raise ConfigError(f"train.grad_accum={train.grad_accum}: train.batch_size=full needs grad_accum=1")
    if train.batch_size % train.grad_accum:
        raise ConfigError(f"train.grad_accum={train.grad_accum}: must divide train.batch_size={train.batch_size}")

    o = "optimizer"
    optim = OptimSettings(
        lr=_pos_float(cfg, f"{o}.lr"), weight_decay=_pos_float(cfg, f"{o}.weight_decay", True),
        b1=_pos_float(cfg, f"{o}.b1", True), b2=_pos_float(cfg, f"{o}.b2", True), eps=_pos_float(cfg, f"{o}.eps"),
        warmup_steps=_pos_int(cfg, f"{o}.warmup_steps", True), min_lr_ratio=_pos_float(cfg, f"{o}.min_lr_ratio", True),
        clip_norm=_pos_float(cfg, f"{o}.clip_norm", True))
    for key in ("b1", "b2"):
        if not getattr(optim, key) < 1:
            raise ConfigError(f"optimizer.{key}={getattr(optim, key)!r}: must be < 1")

    enc_len = cfg["task"].get("enc_len")
    task = TaskSettings(name=_get(cfg, "task.name"), params=dict(cfg["task"].get("params") or {}),
                        seq_len=_pos_int(cfg, "task.seq_len"), enc_len=enc_len)
    logger = parse_logger(cfg)
    device_name = (cfg.get("device") or {}).get("name", "cpu")
    if device_name not in DEVICE_NAMES:
        raise ConfigError(f"device.name={device_name!r}: choose one of {list(DEVICE_NAMES)}")
    mlm_replacement = cfg["arch"].get("mlm_replacement") or "bert"
    if mlm_replacement != "bert" and _get(cfg, "arch.objective") != "mlm":
        raise ConfigError(f"arch.mlm_replacement={mlm_replacement!r}: applies to arch.objective=mlm only "
                          f"(the objective is {_get(cfg, 'arch.objective')!r})")
    mlm_rate = cfg["arch"].get("mlm_rate", 0.15)
    if mlm_rate != 0.15 and _get(cfg, "arch.objective") != "mlm":
        raise ConfigError(f"arch.mlm_rate={mlm_rate!r}: applies to arch.objective=mlm only "
                          f"(the objective is {_get(cfg, 'arch.objective')!r})")
    settings = RunSettings(
        seed=seed, arch=arch, size=str(_get(cfg, "size.name")), objective=str(_get(cfg, "arch.objective")),
        loss_on=cfg["arch"].get("loss_on"), experiment=str(cfg.get("experiment_name", "default")),
        run_name=str(cfg.get("run_name", "run")), task=task, train=train, optim=optim, logger=logger,
        model_overrides={k: v for k, v in (cfg.get("model") or {}).items() if v is not None}, reference_shape=dict(shapes.get("decoder", shapes[arch])),
        mesh=parse_mesh(cfg), device=parse_device(cfg), distributed=parse_distributed(cfg),
        mlm_replacement=mlm_replacement, mlm_rate=float(mlm_rate), finetune=parse_finetune(cfg))
    try:  # every model field checked now, as a config error (the vocabulary size comes later, from the task)
        settings.model_config(128, shapes[arch])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if train.num_seeds > 1:  # k models vmapped on one device (archcmp.training.ensemble)
        for axis in ("data", "fsdp", "tensor"):
            if getattr(settings.mesh, axis) > 1:
                raise ConfigError(f"train.num_seeds={train.num_seeds}: the members are trained together on one "
                                  f"device; mesh.{axis}={getattr(settings.mesh, axis)} needs train.num_seeds=1 "
                                  "(sweep seed= instead)")
        if settings.distributed.num_processes not in (None, 1) or settings.distributed.initialize is True:
            raise ConfigError(f"train.num_seeds={train.num_seeds}: the members are trained together in one process; "
                              "distributed runs need train.num_seeds=1")
    return settings, dict(shapes[arch])
