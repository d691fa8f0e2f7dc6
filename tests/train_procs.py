"""The real ``archcmp-train`` command line in a child process (shared by the command-line, identity,
resume and num_seeds tests): one finished run, and one killed with SIGKILL at a checkpoint."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def train_env(env: dict | None = None) -> dict:
    """The test process's environment for a child run, plus ``env`` (a value of None unsets a key)."""
    merged = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
    return {k: v for k, v in merged.items() if v is not None}


def train_cli(args, cwd, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m archcmp.training.loop *args`` in ``cwd`` to the end; its output is captured as text."""
    return subprocess.run([sys.executable, "-m", "archcmp.training.loop", *args], cwd=cwd, env=train_env(env),
                          capture_output=True, text=True, timeout=timeout)


def kill_when(args, cwd, ready: Callable[[], bool], env: dict | None = None, log: Path | None = None,
              timeout: float = 900) -> None:
    """Start ``python -m archcmp.training.loop *args`` in ``cwd``, poll ``ready()`` until it holds, then SIGKILL
    the process: a run killed mid-way, with no chance to clean up.

    Fails the test if the run ended on its own first (killed too late: nothing left to resume) or
    ``ready()`` did not hold within ``timeout`` seconds. ``log`` keeps the child's output."""
    out = open(log, "w") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "archcmp.training.loop", *args], cwd=cwd, env=train_env(env),
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if log is not None:
            out.close()
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (exit {proc.returncode}) before the kill"
    assert ready(), f"the run was not ready to be killed within {timeout} s"


def kill_at_checkpoint(args, cwd, checkpoint: Path, log: Path | None = None, timeout: float = 900) -> None:
    """``kill_when`` the checkpoint directory ``checkpoint`` exists."""
    kill_when(args, cwd, checkpoint.exists, log=log, timeout=timeout)
