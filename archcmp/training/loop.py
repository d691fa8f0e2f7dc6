"""The command line: ``archcmp-train`` (``python -m archcmp.training.loop``), Hydra's entry point.

It checks the overrides in one line each, composes the config, reads it once into a typed command
(:func:`archcmp.training.command.read_command`) and hands that to
:func:`archcmp.training.trainer.run` (imported only then, so a bad override answers at once and
the process restarts for huge pages before JAX is loaded), and turns the outcome into an exit
status: 2 for a bad setting or a refused directory, 1 for a failed run, 130 for Ctrl-C. In a sweep
a failed job is recorded and the sweep goes on.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from archcmp.training import sweep_names

sweep_names.register()  # ${archcmp.swept:} in conf/config.yaml (also in joblib's worker processes)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONF_GROUPS = ("arch", "size", "task", "optimizer", "logger", "launcher", "device", "experiment")


def _set_cpu_threads(n_jobs: int, scope: str | Path = ".") -> None:
    """Give each of ``n_jobs`` parallel local jobs its own share of the cores: the job takes a free
    slice (one of ``n_jobs``, claimed with a lock file per sweep ``scope``) and pins every thread of
    its process to it (see archcmp.distributed.hosts.claim_cpu_share; XLA thread flags alone do not stop XLA's
    CPU runtime from using every core)."""
    from archcmp.distributed.hosts import claim_cpu_share

    claim_cpu_share(n_jobs, scope)


def _release_cpu_threads() -> None:
    from archcmp.distributed.hosts import release_cpu_share

    release_cpu_share()


def check_overrides(argv: list[str]) -> str | None:
    """One-line message for an override naming a config group option that does not exist."""
    from archcmp.model.config import ModelConfig

    fields = sorted(f.name for f in dataclasses.fields(ModelConfig))
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key.lstrip("+~").startswith("hydra/launcher"):
            return (f"{key}: set the launcher with launcher=NAME (conf/launcher/, e.g. launcher=joblib), which "
                    "also sets its n_jobs and CPU sharing; hydra/launcher= would skip them")
        if key.lstrip("+~").startswith("model.") and key.lstrip("+~").split(".", 1)[1] not in fields:
            return f"{key.lstrip('+~')}: unknown model config key; known keys: {fields}"
        if arg.startswith("~") and arg[1:].split("=")[0] in CONF_GROUPS and arg[1:].split("=")[0] != "experiment":
            return f"{arg[1:].split('=')[0]}: missing; it cannot be removed (choose one of conf/{arg[1:].split('=')[0]}/)"
        if "=" not in arg or arg.startswith(("hydra.", "+", "~", "-")):
            continue
        key, value = arg.split("=", 1)
        if key not in CONF_GROUPS:
            continue
        options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        values = [v for v in value.split(",") if v]
        if not values:
            return f"{key}={value!r}: missing value; choose one of {options}"
        for v in values:
            if v == "null" and key != "experiment":
                return f"{key}=null: a {key} is required; choose one of {options}"
            if v != "null" and v not in options:
                return f"{key}={v!r}: unknown {key}; choose one of {options}"
    return None


def model_overrides(argv: list[str]) -> list[str]:
    """``model.FIELD=VALUE`` (the README's form) as Hydra's add-or-override ``++model.FIELD=VALUE``:
    the model group starts empty (fields left out take the arch/size values), so a plain override of
    a key it does not hold would be refused by Hydra. ``+model.FIELD=`` keeps working."""
    out = []
    for arg in argv:
        if arg.startswith(("model.", "+model.")) and "=" in arg:
            arg = "++" + arg.lstrip("+")
        out.append(arg)
    return out

def _hydra_record(cfg: Any, hc: Any) -> dict[str, str]:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, as text: the run writes them
    (:func:`archcmp.training.records.write_hydra_record`) only once this process has claimed the run
    directory (conf/config.yaml sets ``hydra.output_subdir: null`` so Hydra itself writes nothing
    into a directory that may belong to another run or another writer)."""
    from omegaconf import OmegaConf

    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)})),
            "overrides.yaml": OmegaConf.to_yaml(hc.overrides.task)}


def _name_like_the_directory(cfg: Any, hc: Any) -> None:
    """A sweep job whose directory got the swept keys the run name hides (``-lr0.003``,
    :mod:`archcmp.sweep_names`) carries them in its ``run_name`` too (summary, wandb, tables)."""
    from omegaconf import OmegaConf, open_dict

    swept = sweep_names.env_swept()
    if not swept:
        return
    template = sweep_names.run_name_template(cfg)
    extra = sweep_names.suffix(cfg, template, OmegaConf.to_container(hc.runtime.choices), swept)
    if extra and Path(hc.runtime.output_dir).name == f"{cfg.run_name}{extra}":
        with open_dict(cfg):
            cfg.run_name = template + extra  # still an interpolation: num_seeds members re-resolve it


def _hydra_task(cfg) -> None:
    """One job: Hydra's composed ``cfg`` ends here. It is handed on as plain values (its
    interpolations unresolved, so each ``num_seeds`` member re-resolves its run_name) and read once,
    by :func:`archcmp.training.command.read_command`; the run sees the typed command only."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from archcmp.training.command import read_command
    from archcmp.training.identity import RunRefused
    from archcmp.training.records import record_failure
    from archcmp.training.settings import ConfigError, parse_launcher
    from archcmp.training.sweep import note_refused
    from archcmp.training.trainer import run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        _name_like_the_directory(cfg, hc)
    values, record = OmegaConf.to_container(cfg, resolve=False), _hydra_record(cfg, hc)
    try:
        parse_launcher(hc.launcher)
        n_jobs = hc.launcher.get("n_jobs") if "n_jobs" in hc.launcher else None
        if n_jobs:
            _set_cpu_threads(int(n_jobs), hc.sweep.dir)
        summary = run(read_command(values, record), hc.runtime.output_dir)
    except RunRefused as err:  # nothing was written: no failure record either
        print(f"archcmp-train: error: {err}", file=sys.stderr)
        if multirun:
            note_refused(hc.runtime.output_dir, str(err))
            return
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"archcmp-train: {err or 'interrupted'} (run {hc.runtime.output_dir}: summary says interrupted, "
              "last checkpoint kept); relaunch the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - recorded in summary.json; a sweep goes on
        record_failure(hc.runtime.output_dir, err)
        if isinstance(err, ConfigError):
            if not multirun:  # a sweep reports each distinct bad-config message once, at its end
                print(f"archcmp-train: error: {err}", file=sys.stderr)
        else:
            print(f"archcmp-train: run {hc.runtime.output_dir} failed: {type(err).__name__}: {err}", file=sys.stderr)
            if os.environ.get("ARCHCMP_TRACEBACK"):
                traceback.print_exc()
        if multirun:
            return
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    finally:
        _release_cpu_threads()
    for member in summary.get("members", [summary]):  # train.num_seeds=k: one line per member
        word = "skipped (already complete)" if member.get("skipped") else member["status"]
        if str(member.get("stop_reason", "")).startswith("early_stop") and not member.get("skipped"):
            word += f" (early stop at step {member['stopped_at']})"
        print(f"[{member.get('run_name', '?')}] {word}: eval_loss={member.get('eval_loss')} "
              f"params={member['params_total']:,} fingerprint={member['data_fingerprint'][:12]}")


def main() -> None:
    """Console script: validate group overrides in one line, then hand over to Hydra."""
    from archcmp.distributed.hosts import use_huge_pages

    use_huge_pages()  # restarts this process once (malloc on transparent huge pages)
    err = check_overrides(sys.argv[1:])
    if err:
        print(f"archcmp-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = model_overrides(sys.argv[1:])
    from archcmp.training.config_types import check_command

    err = check_command(sys.argv[1:], str(CONF_DIR))  # Hydra's composition errors, in one line
    if err:
        print(f"archcmp-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    import hydra

    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_hydra_task)()


if __name__ == "__main__":
    main()
