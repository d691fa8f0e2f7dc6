"""Run identity and safe reuse: a changed setting never returns an old result, one writer per run
directory, typed config errors in one line, wandb runs that resume, sweeps that report their own
jobs, Ctrl-C and corrupt checkpoints told in one line. Real processes where a process matters."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from archcmp.training import identity
from archcmp.tracking.tracker import read_jsonl
from archcmp.tracking.wandb_tracker import offline_records
from hydra_cfg import TINY, compose_cfg
from train_procs import kill_when, train_cli
from wandb_files import offline_run_record

TINY2 = [*TINY, "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2"]
RUN = "decoder-nano-addition-s0"


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _snapshot(run_dir: Path) -> dict:
    """Every file under run_dir (but its lock) -> bytes: what "left untouched" compares."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != identity.LOCK_FILE}


# ---- identity -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ident")
    out = train_cli(TINY2, root)
    assert out.returncode == 0, out.stderr[-2000:]
    return root, root / "outputs" / "default" / RUN


@pytest.mark.slow  # trains through the real command line in a child process
@pytest.mark.parametrize("override, diff", [
    ("optimizer.lr=0.01", "optimizer.lr: 0.003 -> 0.01"),
    ("train.steps=3", "train.steps: 2 -> 3"),
    ("task.params.reverse=true", "task.params.reverse: False -> True"),
])
def test_changed_setting_is_refused_naming_the_keys_and_old_results_stay(done_run, override, diff):
    root, run_dir = done_run
    before = _snapshot(run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    out = train_cli([*TINY2, override], root)
    lines = _lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert diff in lines[0] and "train.overwrite=true" in lines[0] and "run_name=" in lines[0], lines[0]
    assert "skipped" not in out.stdout
    assert _snapshot(run_dir) == before  # summary, metrics, checkpoints, .hydra/, identity.json


@pytest.mark.slow  # trains through the real command line in a child process
def test_same_settings_are_skipped_and_bookkeeping_keys_do_not_count(done_run):
    root, run_dir = done_run
    before = _snapshot(run_dir)
    out = train_cli([*TINY2, "train.log_every=2", "train.progress=true", "logger=none"], root)
    assert out.returncode == 0 and "skipped (already complete)" in out.stdout, out.stderr[-2000:]
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("first, again, diff", [
    ([], ["optimizer.lr=0.01", "train.skip_complete=false"], "optimizer.lr: 0.003 -> 0.01"),
    (["task=shakespeare", "run_name=shared"], ["task=shakespeare_bpe", "run_name=shared"],
     "task.params.tokenizer: 'char' -> 'bpe'"),
])
def test_relaunch_with_other_settings_is_refused_before_anything_is_written(first, again, diff, tmp_path):
    """A complete run's directory (identity, summary, metrics, checkpoint as the command writes them) and
    the real command relaunched on it with another setting: exit 2, one line naming the key, and every
    file left as it was -- also with ``train.skip_complete=false``, which once resumed the old
    checkpoint under the new settings and overwrote the complete summary as failed."""
    import jax.numpy as jnp

    from archcmp.training.checkpoint import Checkpointer
    from archcmp.training.records import resolved as _resolved

    run_dir = tmp_path / "run"
    identity.write(run_dir, identity.identity_of(_resolved(compose_cfg([*TINY2, *first]))))
    (run_dir / "summary.json").write_text(json.dumps({"status": "complete", "step": 2, "eval_loss": 1.5}))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "train_loss": 4.0}\n{"step": 2, "train_loss": 3.0}\n')
    with Checkpointer(run_dir / "checkpoints") as ck:
        ck.save(2, {"w": jnp.ones((3,), jnp.float32)}, {"step": 2})
    before = _snapshot(run_dir)
    out = train_cli([*TINY2, *again, "hydra.run.dir=run"], tmp_path)
    lines = _lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert diff in lines[0] and "train.overwrite=true" in lines[0] and "run_name=" in lines[0], lines[0]
    assert "skipped" not in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert _snapshot(run_dir) == before


def test_tokenizer_change_gives_another_run_name_and_is_refused_in_the_same_directory(tmp_path):
    char, bpe = compose_cfg(["task=shakespeare"]), compose_cfg(["task=shakespeare_bpe"])
    assert char.run_name == "decoder-nano-shakespeare-s0" and bpe.run_name == "decoder-nano-shakespeare_bpe-s0"
    from archcmp.training.records import resolved as _resolved

    identity.write(tmp_path, identity.identity_of(_resolved(char)))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 4.0}\n')  # it holds a result
    with pytest.raises(identity.RunRefused, match=r"task.params.tokenizer: 'char' -> 'bpe'"):
        identity.check(tmp_path, _resolved(bpe))
    assert identity.check(tmp_path, _resolved(compose_cfg(["task=shakespeare", "train.progress=false"])))
    with pytest.raises(identity.RunRefused, match=r"device.name: 'cpu' -> 'gpu'"):  # the device is part of it
        identity.check(tmp_path, _resolved(compose_cfg(["task=shakespeare", "device=gpu"])))


def test_runs_from_before_identities_are_judged_by_their_config_yaml(tmp_path):
    import yaml

    from archcmp.training.records import resolved as _resolved

    old = _resolved(compose_cfg(["optimizer.lr=0.01"]))
    del old["train"]["overwrite"]  # a key that did not exist then is not held against the old run
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "summary.json").write_text('{"status": "complete"}')
    with pytest.raises(identity.RunRefused, match=r"optimizer.lr: 0.01 -> 0.003"):
        identity.check(tmp_path, _resolved(compose_cfg([])))
    identity.check(tmp_path, _resolved(compose_cfg(["optimizer.lr=0.01"])))


@pytest.mark.slow  # trains through the real command line in a child process
def test_overwrite_moves_the_old_run_aside_and_trains_anew(tmp_path):
    first = train_cli(TINY2, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "outputs" / "default" / RUN
    before = _snapshot(run_dir)
    out = train_cli([*TINY2, "optimizer.lr=0.01", "train.overwrite=true"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    aside = [p for p in run_dir.parent.iterdir() if p.name.startswith(RUN + identity.ASIDE_MARK)]
    assert len(aside) == 1 and f"moved the earlier run {run_dir} to {aside[0]}" in out.stderr
    assert _snapshot(aside[0]) == before  # kept whole
    new = json.loads((run_dir / "identity.json").read_text())["settings"]
    assert new["optimizer"]["lr"] == 0.01
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    from archcmp.analysis.common.runs import find_run_dirs

    assert find_run_dirs(run_dir.parent) == [run_dir]  # the old run is no longer part of the folder


# ---- one writer ----------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from archcmp.training.identity import RunLock
    RunLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


@pytest.mark.slow  # trains through the real command line in a child process
def test_second_writer_is_refused_and_a_killed_holders_lock_does_not_block(tmp_path):
    run_dir = tmp_path / "outputs" / "default" / RUN
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = train_cli(TINY2, tmp_path)
        lines = _lines(out.stderr)
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert f"is being written by pid {holder.pid} on host" in lines[0], lines[0]
        assert sorted(p.name for p in run_dir.iterdir()) == [identity.LOCK_FILE]  # nothing else written
    finally:
        holder.send_signal(signal.SIGKILL)  # the stale holder: its flock dies with it
        holder.wait()
    out = train_cli(TINY2, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


# ---- typed config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, key", [
    (["train.skip_complete=no"], "train.skip_complete='no': must be true or false"),
    (["train.resume=1"], "train.resume=1: must be true or false"),
    (["logger=wandb", "logger.mode=onlin"], "logger.mode='onlin': choose one of ['online', 'offline', 'disabled']"),
    (["model.n_heads=5"], "model.n_heads=5"),
    (["+model.n_heads=5"], "model.n_heads=5"),
    (["model.d_modle=3"], "model.d_modle: unknown model config key"),
    (["hydra/launcher=joblib"], "launcher=NAME"),
    (["device.name=gpux"], "device.name='gpux'"),
    (["+train.stepz=3"], "train.stepz=3: unknown key"),
    (["train.stepz=3"], "train.stepz: unknown key"),
    (["optimizer.name=sgd"], "optimizer.name='sgd': choose one of ['adamw']"),
    (["model.init_std=abc"], "model.init_std='abc': must be a number"),
    (["-m", "launcher=joblib", "hydra.launcher.n_jobs=abc"], "hydra.launcher.n_jobs: Value 'abc'"),
    (["-m", "launcher=joblib", "hydra.launcher.prefer=zzz"], "hydra.launcher.prefer='zzz'"),
    (["-m", "optimizer.lr=1e-3,abc"], "optimizer.lr='abc': must be a positive number"),
])
def test_bad_typed_values_exit_2_with_one_line(args, key, tmp_path):
    out = train_cli([*TINY2, *args], tmp_path)
    lines = _lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1 and key in lines[0], out.stderr
    assert "failed" not in lines[0]  # a config error, never a "failed run"
    for path in tmp_path.rglob("summary.json"):  # if recorded at all: as a config error
        assert json.loads(path.read_text())["error_kind"] == "config"


@pytest.mark.slow  # trains through the real command line in a child process
def test_model_fields_are_reachable_without_plus(tmp_path):
    out = train_cli([*TINY2, "model.pos_encoding=learned", "model.n_heads=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "outputs" / "default" / RUN / "summary.json").read_text())
    assert summary["model"]["pos_encoding"] == "learned" and summary["model"]["n_heads"] == 2


# ---- wandb ------------------------------------------------------------------------------------------
def _history_steps(run_dir: Path, run_id: str) -> list[int]:
    """Every history step of every offline file of ``run_id`` (all processes), in file order."""
    steps = []
    for path in sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        for rec in offline_records(path):
            if rec.WhichOneof("record_type") == "history":
                row = {(it.key or ".".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item}
                steps.append(int(row["_step"]))
    return steps


@pytest.mark.slow
def test_killed_wandb_run_resumes_into_one_wandb_run_holding_every_step_once(tmp_path):
    args = ["arch=decoder", "size=nano", "train.steps=40", "train.checkpoint_every=10", "train.eval_every=20",
            "train.batch_size=8", "train.progress=false", "train.log_every=1", "task.seq_len=24",
            "train.eval_examples=16", "train.eval_batch_size=8", "logger=wandb", "hydra.run.dir=run"]
    run_dir = tmp_path / "run"

    def past_first_checkpoint():  # past the first checkpoint, before the 2nd
        rows = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
        return (run_dir / "checkpoints" / "10").exists() and bool(rows) and rows[-1] >= 13

    kill_when(args, tmp_path, past_first_checkpoint, env={"WANDB_MODE": None})
    killed_at = max(r["step"] for r in read_jsonl(run_dir / "metrics.jsonl"))
    assert 10 < killed_at < 40, killed_at
    run_id = json.loads((run_dir / "wandb.json").read_text())["id"]

    out = train_cli(args, tmp_path, env={"WANDB_MODE": None})
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from"] == 10
    assert json.loads((run_dir / "wandb.json").read_text())["id"] == run_id  # the same wandb run
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files), files  # one id, two processes
    deadline = time.monotonic() + 30  # wandb-core may flush after the process returned
    while len(_history_steps(run_dir, run_id)) < 40 and time.monotonic() < deadline:
        time.sleep(0.2)
    steps = _history_steps(run_dir, run_id)
    assert sorted(steps) == list(range(1, 41)), steps  # every logged step, exactly once
    logged = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r}
    assert sorted(logged) == list(range(1, 41))
    # tokens/s counts no step that compiled: the first step of each process (step 1, and step 11 right
    # after the resume from 10) reports nothing measured yet, every later one a rate
    assert [s for s, r in logged.items() if r["tokens_per_sec"] == 0] == [1, 11], logged
    assert summary["tokens_per_sec"] == logged[40]["tokens_per_sec"] > 0


def test_environment_wandb_mode_wins_with_one_warning_line(capsys, monkeypatch):
    from archcmp.tracking.wandb_tracker import resolve_mode

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("offline") == "disabled"
    assert "WANDB_MODE=disabled in the environment wins" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode("offline") == "offline"


# ---- sweeps -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_second_sweep_in_the_same_folder_reports_only_its_own_jobs(tmp_path):
    """Two sweeps left at experiment_name=default share multirun/default: the second reports its own two
    jobs (the first's run listed apart), each launch keeps its multirun.yaml, and the second's wandb runs
    are grouped by the folder and what the sweep varies."""
    first = train_cli(["-m", "seed=0", *TINY2], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = train_cli(["-m", "seed=1,2", "logger=wandb", *TINY2], tmp_path, env={"WANDB_MODE": None})
    assert second.returncode == 0, second.stderr[-2000:]
    table = [line for line in second.stdout.splitlines() if line.startswith("| decoder-")]
    assert sorted(line.split("|")[1].strip() for line in table) == ["decoder-nano-addition-s1",
                                                                      "decoder-nano-addition-s2"], second.stdout
    assert "sweep: 2 runs: 2 completed" in second.stdout
    assert "1 run(s) from earlier launches" in second.stdout
    sweep = tmp_path / "multirun" / "default"
    report = (sweep / "comparison.md").read_text()
    own, earlier = report.split("## Earlier runs")
    assert "s0" not in own and "decoder-nano-addition-s0" in earlier
    launches = sorted((sweep / "launches").iterdir())
    assert len(launches) == 2 and all((d / "multirun.yaml").exists() for d in launches)
    assert "seed=0" in (launches[0] / "multirun.yaml").read_text()
    assert "seed=1,2" in (launches[1] / "multirun.yaml").read_text()
    for seed in (1, 2):
        run = offline_run_record(sweep / f"decoder-nano-addition-s{seed}")
        assert run.run_group == "default sweep over seed" and run.display_name == f"decoder-nano-addition-s{seed}"


@pytest.mark.slow
def test_sweep_over_a_key_the_run_name_hides_gets_a_directory_per_value(tmp_path):
    """optimizer.lr is not in the default run name: each job's name (and directory) gets -lr<value>,
    both train, and the same sweep again finds both complete."""
    args = ["-m", "optimizer.lr=1e-3,3e-3", "experiment_name=hidden", *TINY2]
    first = train_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep: 2 runs: 2 completed, 0 resumed, 0 skipped (already complete), 0 failed" in first.stdout
    sweep = tmp_path / "multirun" / "hidden"
    for lr, text in ((0.001, "0.001"), (0.003, "0.003")):
        run_dir = sweep / f"{RUN}-lr{text}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["run_name"] == run_dir.name
        assert json.loads((run_dir / "identity.json").read_text())["settings"]["optimizer"]["lr"] == lr
    assert sorted(p.name for p in sweep.iterdir() if p.name.startswith("decoder")) == [f"{RUN}-lr0.001",
                                                                                     f"{RUN}-lr0.003"]
    again = train_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 skipped (already complete)" in again.stdout, again.stdout


# ---- fault output ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_one_line(tmp_path):
    # no periodic checkpoint before the end: the one found afterwards is the interrupt's
    args = [*TINY, "train.steps=400", "train.checkpoint_every=400", "train.eval_every=400", "hydra.run.dir=run"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "archcmp.training.loop", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if any("train_loss" in r for r in read_jsonl(run_dir / "metrics.jsonl")[-1:]) and \
                read_jsonl(run_dir / "metrics.jsonl")[-1]["step"] >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    lines = _lines(err)
    assert len(lines) == 1 and "interrupted at step" in lines[0] and "relaunch" in lines[0], err
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = summary["step"]
    assert summary["status"] == "interrupted" and 5 <= stopped < 400
    assert f"interrupted at step {stopped}" in lines[0]
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [stopped]
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    assert max(logged) == stopped  # every step up to the interrupt was logged, none after it
    # The same command again: resumes from the interrupt's checkpoint and finishes.
    out = train_cli(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from"] == stopped and summary["step"] == 400
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    assert logged == list(range(1, 401))  # each step once: nothing lost, nothing repeated


NOISE = ("Traceback", "Event loop is closed", "ERROR", "tensorstore")


@pytest.mark.slow  # trains through the real command line in a child process
def test_corrupt_newest_checkpoint_gives_one_warning_line_and_resumes_from_the_step_before(tmp_path):
    args = [*TINY, "train.steps=4", "train.checkpoint_every=2", "hydra.run.dir=run"]
    first = train_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    (run_dir / "summary.json").unlink()  # as if killed after the last save: the relaunch resumes
    # the case (the top OCDBT manifest) and an array data file of the same step
    manifest = (ckpts / "4" / "state" / "manifest.ocdbt").stat().st_size
    (ckpts / "4" / "state" / "manifest.ocdbt").write_bytes(b"garbage")
    data = max((f for f in (ckpts / "4" / "state").rglob("*") if f.is_file() and "/d/" in f.as_posix()),
               key=lambda f: f.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    out = train_cli(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    both = out.stdout + out.stderr
    told = [line for line in _lines(both) if "checkpoint" in line]
    assert told == [f"archcmp-train: warning: checkpoint step 4 in {ckpts} is unreadable (state/manifest.ocdbt has "
                    f"7 bytes, {manifest} were saved, and 1 more file); using step 2 instead"], both
    assert _lines(out.stderr) == told, out.stderr  # nothing else on stderr: no traceback of any kind
    assert not [n for n in NOISE if n in both], both
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from"] == 2 and summary["step"] == 4
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    assert logged == [1, 2, 3, 4]  # steps 3-4 trained again, each logged once
    from archcmp.training.checkpoint import digest_problem

    assert digest_problem(ckpts / "4") is None  # step 4 saved anew, whole


@pytest.mark.slow  # trains through the real command line in a child process
def test_members_fall_back_together_when_one_members_newest_step_is_damaged(tmp_path):
    """train.num_seeds=2: member s1's newest step damaged after its save -> one warning line, both members
    resume from the step before and end exactly where the undamaged run ended."""
    args = [*TINY, "train.steps=4", "train.checkpoint_every=2", "train.num_seeds=2", "hydra.run.dir=run"]
    first = train_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    members = sorted(p.parent for p in (tmp_path / "run").glob("*/summary.json"))
    assert len(members) == 2
    before = [json.loads((m / "summary.json").read_text())["eval_loss"] for m in members]
    for m in members:
        (m / "summary.json").unlink()  # as if killed after the last save
    damaged = members[1] / "checkpoints" / "4"
    manifest = damaged / "state" / "manifest.ocdbt"
    size = manifest.stat().st_size
    manifest.write_bytes(manifest.read_bytes()[: size // 2])
    out = train_cli(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    both = out.stdout + out.stderr
    assert _lines(out.stderr) == [
        f"archcmp-train: warning: checkpoint step 4 is damaged ({damaged}: state/manifest.ocdbt has {size // 2} "
        f"bytes, {size} were saved); every member resumes from step 2 instead"], out.stderr
    assert not [n for n in NOISE if n in both], both
    after = [json.loads((m / "summary.json").read_text()) for m in members]
    assert [a["resumed_from"] for a in after] == [2, 2] and [a["eval_loss"] for a in after] == before


def test_all_checkpoints_corrupt_stops_in_one_line_naming_the_directory(tmp_path):
    """A run directory of these very settings whose every checkpoint was damaged after its save: the
    relaunch stops before training with one line naming the directory and ``train.resume=false``."""
    import jax.numpy as jnp

    from archcmp.training.checkpoint import Checkpointer
    from archcmp.training.records import resolved as _resolved

    args = [*TINY, "train.steps=4", "train.checkpoint_every=2"]
    run_dir = tmp_path / "run"
    identity.write(run_dir, identity.identity_of(_resolved(compose_cfg(args))))  # the relaunch's own settings
    ckpts = run_dir / "checkpoints"
    ck = Checkpointer(ckpts)
    for step in (2, 4):
        ck.save(step, {"w": jnp.full((3,), step, jnp.float32)}, {"step": step})
    ck.close()
    (ckpts / "4" / "state" / "manifest.ocdbt").write_bytes(b"garbage")
    (ckpts / "2" / "meta" / "metadata").write_text("{}")
    out = train_cli([*args, "hydra.run.dir=run"], tmp_path)
    both = out.stdout + out.stderr
    assert out.returncode == 2, both[-3000:]
    assert _lines(out.stderr) == [
        f"archcmp-train: error: train.resume=true: no readable checkpoint in {ckpts} (steps 4, 2 all corrupt or "
        "unreadable); relaunch with train.resume=false to train from the start (or train.overwrite=true to "
        "keep the old run aside)"], out.stderr
    assert not [n for n in NOISE if n in both], both
    assert not (run_dir / "metrics.jsonl").exists() or not read_jsonl(run_dir / "metrics.jsonl")  # nothing trained
