"""Sweep bookkeeping: a killed sweep relaunched finishes without redoing finished runs; a failed
run is recorded and does not stop the others."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hydra_cfg import TINY

from archcmp.training.sweep import config_error_messages

SWEEP = ["-m", "arch=decoder", "seed=0,1,2", "experiment_name=sw", *TINY, "train.steps=40",
         "train.checkpoint_every=5"]


def _launch(args, cwd, log=None):
    """The sweep as a child process. With ``log`` (an open file) its output goes there: a child that
    is polled, not waited on, must not write into a pipe nobody reads (a full pipe would block it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out, err = (subprocess.PIPE, subprocess.PIPE) if log is None else (log, subprocess.STDOUT)
    return subprocess.Popen([sys.executable, "-m", "archcmp.training.loop", *args], cwd=cwd, env=env,
                            stdout=out, stderr=err, text=True)


def _summary(path):
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.slow
def test_killed_sweep_relaunch_completes_without_redoing_runs(tmp_path):
    runs = [tmp_path / "multirun" / "sw" / f"decoder-nano-addition-s{i}" for i in range(3)]
    with open(tmp_path / "first.log", "w+") as log:
        proc = _launch(SWEEP, tmp_path, log)
        deadline = time.monotonic() + 300
        while _summary(runs[0] / "summary.json").get("status") != "complete" and time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"sweep exited early:\n{log.read()[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _summary(runs[2] / "summary.json").get("status") != "complete", "sweep finished before the kill"
    first = (runs[0] / "summary.json").read_text()

    again = _launch(SWEEP, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert (runs[0] / "summary.json").read_text() == first  # not trained again
    assert all(_summary(r / "summary.json")["status"] == "complete" for r in runs)
    last = [line for line in out.splitlines() if line.startswith("sweep:")][-1]
    assert "1 skipped" in last and "0 failed" in last, last
    counts = [int(w) for w in last.replace(",", "").split() if w.isdigit()]
    assert counts[0] == 3 and counts[1] + counts[2] == 2, last  # the other two: completed or resumed


@pytest.mark.slow
def test_failed_run_is_recorded_and_others_go_on(tmp_path):
    args = ["-m", "arch=decoder", "experiment_name=fail", "run_name=r${hydra:job.num}", *TINY,
            "task.params.digits=[1,3],[12,12]"]
    proc = _launch(args, tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    ok = _summary(tmp_path / "multirun" / "fail" / "r0" / "summary.json")
    bad = _summary(tmp_path / "multirun" / "fail" / "r1" / "summary.json")
    assert ok["status"] == "complete"
    assert bad["status"] == "failed" and "task.seq_len" in bad["error"]
    assert bad["error_kind"] == "config"
    assert "1 completed, 0 resumed, 0 skipped (already complete), 1 failed" in out


def test_config_errors_are_told_by_error_kind_and_old_summaries_by_their_text():
    summaries = [
        {"status": "failed", "error": "ConfigError: train.steps=-1: bad", "error_kind": "config"},
        {"status": "failed", "error": "ConfigError: seed=-1: bad"},  # written before error_kind existed
        {"status": "failed", "error": "OSError: disk full", "error_kind": "OSError"},
        {"status": "complete", "error": None, "error_kind": None},
    ]
    assert config_error_messages(summaries) == ["seed=-1: bad", "train.steps=-1: bad"]
