import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from archcmp.tracking import tracker as track
from wandb_files import _key, _read_wandb_records
from archcmp.tracking.tracker import (
    JsonlTracker,
    MultiTracker,
    NullTracker,
    Tracker,
    make_tracker,
    read_jsonl,
)
from archcmp.tracking.wandb_tracker import WandbTracker


# ------------------------------------------------------------------------------------------ jsonl
def test_jsonl_round_trip_and_summary(tmp_path):
    t = JsonlTracker(tmp_path)
    assert isinstance(t, Tracker)
    t.log({"loss": np.float32(1.5), "acc": np.array(0.25), "hist": np.arange(3)}, step=1)
    t.log({"loss": 1.0, "step": 999}, step=2)  # metrics' own "step" never overrides
    # each line is flushed immediately: readable before finish
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows == [
        {"step": 1, "loss": 1.5, "acc": 0.25, "hist": [0, 1, 2]},
        {"step": 2, "loss": 1.0},
    ]
    t.log_summary({"final_loss": 1.0, "best": {"step": 2}})
    t.log_summary({"final_acc": 0.5})  # merges
    t.finish("complete")
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s == {"final_loss": 1.0, "best": {"step": 2}, "final_acc": 0.5, "status": "complete"}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp files


def test_jsonl_truncate_and_resume(tmp_path):
    t = JsonlTracker(tmp_path)
    for s in range(1, 7):
        t.log({"loss": float(s)}, step=s)
    # simulate a kill mid-write: partial trailing line
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    t2 = JsonlTracker(tmp_path)  # resumed process repairs the tail
    assert t2.truncate_after(4) == 2
    t2.log({"loss": 50.0}, step=5)
    t2.finish()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["loss"] == 50.0


def test_make_tracker_kinds_and_context_manager(tmp_path):
    t = make_tracker("none", tmp_path / "a")
    assert isinstance(t, JsonlTracker)
    assert isinstance(make_tracker("none", None), NullTracker)
    with pytest.raises(ValueError):
        make_tracker("tensorboard", tmp_path)
    with pytest.raises(RuntimeError):
        with make_tracker("jsonl", tmp_path / "b") as t:
            t.log({"x": 1}, step=1)
            raise RuntimeError("boom")
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "failed"
    # resume_step truncates
    t = make_tracker("jsonl", tmp_path / "b", resume_step=0)
    t.finish()
    assert read_jsonl(tmp_path / "b" / "metrics.jsonl") == []


def test_trainer_tracker_leaves_the_summary_to_the_trainer(tmp_path):
    # The trainer writes the whole summary in one write; the tracker closing first must not leave
    # a summary that says "complete" and holds nothing else (a sweep relaunch would skip it).
    with make_tracker("jsonl", tmp_path, record_status=False) as t:
        t.log({"x": 1}, step=1)
    assert not (tmp_path / "summary.json").exists()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "x": 1}]


def test_jsonl_log_files(tmp_path):
    outside = tmp_path / "plot.png"
    outside.write_bytes(b"\x89PNG")
    run = tmp_path / "run"
    inside = run / "table.csv"
    run.mkdir()
    inside.write_text("a,b\n1,2\n")
    t = JsonlTracker(run)
    t.log_files({"plot": outside, "table": inside})
    idx = json.loads((run / "files.json").read_text())
    assert idx == {"plot": "files/plot.png", "table": "table.csv"}
    assert (run / "files" / "plot.png").exists()


# ------------------------------------------------------------------------------------------ wandb
def _wandb_file(tracker: WandbTracker) -> Path:
    files = list(tracker.run_dir.glob("run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def _finished_records(tracker: WandbTracker, timeout: float = 20.0):
    """Records of a finished run. ``run.finish()`` can return before wandb-core has flushed the
    buffered transaction log (seen with wandb 0.31), so poll until the ``exit`` record is on disk."""
    deadline = time.monotonic() + timeout
    while True:
        records = _read_wandb_records(_wandb_file(tracker))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


@dataclasses.dataclass(frozen=True)
class Cfg:
    arch: str = "decoder"
    lr: float = 1e-3
    job: int = 0


@pytest.fixture(scope="module")
def two_offline_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_runs")
    out = []
    for i in range(2):  # one after another in the same process, like a Hydra multirun
        run_dir = root / f"job{i}"
        t = make_tracker(
            "wandb",
            run_dir,
            project="archcmp-test",
            name=f"exp-decoder-s{i}",
            group="sweep1",
            tags=["decoder", "tiny"],
            config=Cfg(job=i),
        )
        wb = t.trackers[1]
        assert wb.active
        t.log({"train/loss": 0.125 + i, "lr": np.float32(1e-3)}, step=10)
        t.log({"train/loss": 0.0625 + i}, step=20)
        t.log_summary({"final_eval_loss": 3.5 + i})
        t.finish("complete")
        out.append((run_dir, wb))
    return out


def test_wandb_offline_writes_metrics(two_offline_runs):
    run_dir, wb = two_offline_runs[0]
    assert wb.run_dir.name.startswith("offline-run-")
    assert wb.run_dir.is_relative_to(run_dir)
    records = _finished_records(wb)
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "history", "summary"} <= kinds
    hist = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            hist.append({_key(it): json.loads(it.value_json) for it in r.history.item})
    losses = {h["_step"]: h["train/loss"] for h in hist if "train/loss" in h}
    assert losses == {10: 0.125, 20: 0.0625}
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for it in r.summary.update:
                summary[_key(it)] = json.loads(it.value_json)
    assert summary["final_eval_loss"] == 3.5
    assert summary["status"] == "complete"
    run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_rec.display_name == "exp-decoder-s0"
    assert run_rec.run_group == "sweep1"
    assert list(run_rec.tags) == ["decoder", "tiny"]
    cfg = {_key(it): json.loads(it.value_json) for it in run_rec.config.update}
    assert cfg["arch"] == "decoder" and cfg["job"] == 0
    # jsonl is always on next to wandb
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [10, 20]


def test_wandb_successive_runs_are_distinct(two_offline_runs):
    (_, a), (_, b) = two_offline_runs
    assert a.run_id and b.run_id and a.run_id != b.run_id
    assert a.run_dir != b.run_dir
    hist = [r for r in _finished_records(b) if r.WhichOneof("record_type") == "history"]
    vals = [json.loads(it.value_json) for r in hist for it in r.history.item if _key(it) == "train/loss"]
    assert vals == [1.125, 1.0625]  # run b holds only its own metrics


def test_wandb_init_failure_falls_back_to_noop(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def boom(*a, **k):
        raise ConnectionError("wandb unreachable")

    monkeypatch.setattr(wandb, "init", boom)
    with pytest.warns(RuntimeWarning, match="continuing without wandb"):
        t = make_tracker("wandb", tmp_path, project="x", mode="online")
    wb = t.trackers[1]
    assert not wb.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only; later calls are silent no-ops
        with t:
            t.log({"loss": 1.0}, step=1)
            t.log_summary({"final": 1.0})
            t.log_files({"f": tmp_path / "missing.png"})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]


def test_wandb_call_failure_disables(tmp_path):
    class BadRun:
        id, dir = "bad", str(tmp_path / "files")
        summary = {}

        def log(self, *a, **k):
            raise OSError("disk full in wandb")

        def finish(self, exit_code=None):
            pass

    wb = WandbTracker.__new__(WandbTracker)
    wb.run, wb._warned, wb._last_step = BadRun(), False, 0
    with pytest.warns(RuntimeWarning, match="wandb log failed"):
        wb.log({"a": 1}, step=1)
    assert not wb.active
    wb.log({"a": 2}, step=2)  # no-op, no raise
    wb.finish("failed")


def test_multitracker_finish_reaches_all(tmp_path):
    calls = []

    class Bad(NullTracker):
        def finish(self, status="complete"):
            calls.append("bad")
            raise OSError("x")

    class Good(NullTracker):
        def finish(self, status="complete"):
            calls.append(status)

    with pytest.raises(OSError):
        MultiTracker(Bad(), Good()).finish("interrupted")
    assert calls == ["bad", "interrupted"]
    assert track.status_for_exception(KeyboardInterrupt()) == "interrupted"
