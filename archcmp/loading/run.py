"""Load a training run of ours: its config, model parameters at a saved step, and task tokenizer.

A run directory (``archcmp-train`` output) holds ``summary.json`` (model config, seed),
``.hydra/config.yaml`` (task, optimizer) and ``checkpoints/<step>/``. :func:`load_run` returns a
:class:`~archcmp.loading.loaded.Loaded`; :func:`read_run` and :func:`restore_params` are the pieces the
probe CLIs use to walk every checkpoint of a run with one compiled model.

A fine-tuned run (``finetune.from=...``, :mod:`archcmp.training.finetune`) loads the same way: its
checkpoints hold ``{"backbone", "head"}``; ``Loaded.model`` is the fine-tuned backbone (so
:func:`archcmp.attention` / :func:`archcmp.hidden_states` read it like any run), ``Loaded.head`` the
trained classifier head (None for ``finetune.head=generate``) and ``info["finetune"]`` the run's
fine-tuning record; :func:`archcmp.loading.finetuned.classify` gives the class logits.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from archcmp.model.config import ModelConfig
from archcmp.loading.loaded import Loaded
from archcmp.model.archs import arch_spec


@dataclass
class RunInfo:
    """What a run directory says about itself."""

    run_dir: Path
    summary: dict
    config: dict     # resolved .hydra/config.yaml
    model_cfg: ModelConfig

    @property
    def name(self) -> str:
        return str(self.summary.get("run_name") or self.run_dir.name)

    @property
    def arch(self) -> str:
        return self.model_cfg.arch

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", 0))

    @property
    def heads_tag(self) -> str:
        return f"h{self.model_cfg.n_heads}x{self.model_cfg.head_size}"

    @property
    def label(self) -> str:
        return f"{self.arch} {self.summary.get('size', '?')} {self.heads_tag}"


def read_run(run_dir: str | Path) -> RunInfo:
    """``summary.json`` + ``.hydra/config.yaml`` (else the resolved ``config.yaml``) of a run (no arrays
    loaded)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: missing (not a run directory of archcmp-train)")
    summary = json.loads(summary_path.read_text())
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.exists():  # a run trained without the Hydra entry point: its resolved config.yaml
        cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir / '.hydra' / 'config.yaml'}: missing, and no config.yaml "
                                "(the task parameters are read from it)")
    config = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    return RunInfo(run_dir, summary, config, ModelConfig(**summary["model"]))


def saved_steps(run: RunInfo) -> list[int]:
    """Checkpoint steps on disk, ascending ([] when the run saved none)."""
    from archcmp.training.checkpoint import Checkpointer

    d = run.run_dir / "checkpoints"
    if not d.is_dir():
        return []
    ck = Checkpointer(d, keep=None)
    try:
        return ck.all_steps()
    finally:
        ck.close()


def _restore_target(run: RunInfo, state):
    """Abstract target of a saved train state: ``{"params": <model state>, "opt_state": ...}``."""
    import jax

    from archcmp.training.optim import make_optimizer
    from archcmp.training.settings import parse

    s, _ = parse(run.config, typed=False)  # a run of an older version: its own keys
    tx = make_optimizer(s.optim, s.train.steps)
    return {"params": jax.eval_shape(lambda x: x, state), "opt_state": jax.eval_shape(tx.init, state)}


def _strip_value(tree):
    if isinstance(tree, dict):
        if set(tree) == {"value"}:
            return tree["value"]
        return {k: _strip_value(v) for k, v in tree.items()}
    return tree


def restore_params(ck, run: RunInfo, step: int, state):
    """Model parameters of checkpoint ``step`` (open :class:`~archcmp.training.checkpoint.Checkpointer` ``ck``)
    as an nnx State shaped like ``state`` (from ``nnx.split(build_model(run.model_cfg))``)."""
    from flax import nnx

    try:
        restored, _ = ck.restore(step=step, target=_restore_target(run, state))
        return restored["params"]
    except Exception as err:  # noqa: BLE001 - e.g. optimizer settings changed: fall back to a generic restore
        warnings.warn(f"{run.name} step {step}: typed restore failed ({type(err).__name__}); "
                      "restoring without a target", RuntimeWarning, stacklevel=2)
        restored, _ = ck.restore(step=step, target=None)
        new = nnx.clone(state) if hasattr(nnx, "clone") else state
        nnx.replace_by_pure_dict(new, _strip_value(restored["params"]))
        return new


def run_task(run: RunInfo):
    """The run's task object (its tokenizer and examples), built from the run's task config."""
    from archcmp.data import make_task

    tcfg = run.config["task"]
    return make_task(run.summary.get("task") or tcfg["name"], **dict(tcfg.get("params") or {}))


def load_run(run_dir: str | Path, step: int | None = None) -> Loaded:
    """A run of ours at checkpoint ``step`` (None = the newest saved; 0 = the initialisation the run
    trained from) -> :class:`~archcmp.loading.loaded.Loaded` with the task tokenizer and formatter."""
    from flax import nnx

    from archcmp.training.checkpoint import Checkpointer
    from archcmp.data.formatters import make_formatter
    from archcmp.model.models import build_model

    t0 = time.perf_counter()
    run = read_run(run_dir)
    steps = saved_steps(run)
    if step is None:
        step = steps[-1] if steps else 0
    if step != 0 and step not in steps:
        raise ValueError(f"step={step!r}: no checkpoint of {run.run_dir} at that step; saved steps: {steps}")
    model = build_model(run.model_cfg, run.seed)
    ft = run.summary.get("finetune")
    head = None
    if ft is not None:
        if step == 0:
            raise ValueError(f"step=0: {run.run_dir} is a fine-tuned run; its starting weights are those of "
                             f"its source {ft.get('source_run')!r} at step {ft.get('source_step')}")
        model, head = _finetuned_params(run, step, model)
    elif step != 0:
        graphdef, state = nnx.split(model)
        with Checkpointer(run.run_dir / "checkpoints", keep=None) as ck:
            model = nnx.merge(graphdef, restore_params(ck, run, step, state))
    task = run_task(run)
    tcfg = run.config["task"]
    T = int(tcfg["seq_len"])
    enc_len = arch_spec(run.arch).encoder_len(T, int(tcfg.get("enc_len") or T))
    info = {"kind": "run", "step": step, "saved_steps": steps, "run": run.name, "label": run.label,
            "summary": run.summary, "config": run.config, "task": task, "load_seconds": time.perf_counter() - t0}
    if ft is not None:
        info["finetune"] = ft
    return Loaded(model, run.model_cfg, task.tokenizer, task.tokenizer.encode, run.run_dir, info,
                  make_formatter(run.arch, T, enc_len), head)


def _finetuned_params(run: RunInfo, step: int, model):
    """(backbone, head or None) of a fine-tuned run at checkpoint ``step``: the saved train state is
    ``{"params": {"backbone", "head"}, "opt_state"}`` with the optimizer over what was trained."""
    import jax
    from flax import nnx

    from archcmp.model.heads import ClassifierHead
    from archcmp.training.checkpoint import Checkpointer
    from archcmp.training.optim import make_optimizer
    from archcmp.training.settings import parse

    ft = run.summary["finetune"]
    s, _ = parse(run.config, typed=False)
    graphdef, state = nnx.split(model)
    params = {"backbone": state}
    gd_head = None
    if ft["head"] != "generate":
        classes = len(run_task(run).label_ids)
        gd_head, params["head"] = nnx.split(ClassifierHead(run.model_cfg.d_model, classes, run.seed))
    trained = params if ft.get("train_backbone", True) else params["head"]
    tx = make_optimizer(s.optim, int(run.summary.get("steps") or s.train.steps))
    target = {"params": jax.eval_shape(lambda x: x, params), "opt_state": jax.eval_shape(tx.init, trained)}
    with Checkpointer(run.run_dir / "checkpoints", keep=None) as ck:
        restored, _ = ck.restore(step=step, target=target)
    p = restored["params"]
    head = None if gd_head is None else nnx.merge(gd_head, p["head"])
    return nnx.merge(graphdef, p["backbone"]), head
