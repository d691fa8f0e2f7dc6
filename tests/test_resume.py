"""Kill -9 and resume with dropout and gradient accumulation: the resumed run ends in the very state
of an uninterrupted one (parameters *and* optimizer state) and logs the same loss at every step."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from archcmp.training.checkpoint import Checkpointer
from archcmp.tracking.tracker import read_jsonl

pytestmark = pytest.mark.slow

STEPS = 30
ARGS = ["arch=encdec", "size=nano", f"train.steps={STEPS}", "train.checkpoint_every=10", "train.eval_every=20",
        "train.batch_size=8", "train.grad_accum=2", "+model.dropout=0.1", "train.log_every=1",
        "train.progress=false", "task.seq_len=24", "logger=none"]


def _env():
    return {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def _train(run_dir, cwd):
    done = subprocess.run([sys.executable, "-m", "archcmp.training.loop", *ARGS, f"hydra.run.dir={run_dir}"], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _state(run_dir):
    ckpt = Checkpointer(Path(run_dir) / "checkpoints")
    state, meta = ckpt.restore()
    ckpt.close()
    return state, meta


def _losses(run_dir):
    rows = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "train_loss" in r]
    return [r["step"] for r in rows], [r["train_loss"] for r in rows]


def test_killed_run_with_dropout_and_grad_accum_resumes_exactly(tmp_path):
    _train("full", tmp_path)
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "archcmp.training.loop", *ARGS, "hydra.run.dir=killed"], cwd=tmp_path,
                                env=_env(), stdout=log, stderr=subprocess.STDOUT)
        first_ckpt = tmp_path / "killed" / "checkpoints" / "10"
        deadline = time.monotonic() + 300
        while not first_ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _train("killed", tmp_path)

    done = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert done["status"] == "complete" and 10 <= done["resumed_from"] < STEPS  # killed mid-run, really resumed
    (a, meta_a), (b, meta_b) = _state(tmp_path / "full"), _state(tmp_path / "killed")
    assert meta_a["step"] == meta_b["step"] == STEPS
    assert set(a) == set(b) and "opt_state" in a
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):  # parameters, Adam moments, step counts: bit for bit
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps_a, losses_a = _losses(tmp_path / "full")
    steps_b, losses_b = _losses(tmp_path / "killed")
    assert steps_a == steps_b == list(range(1, STEPS + 1))  # every step once, none twice after the resume
    assert losses_a == losses_b  # the same dropout masks and micro-batches at every step
    assert len(set(losses_a)) > STEPS // 2  # the losses do change from step to step (dropout is live)
