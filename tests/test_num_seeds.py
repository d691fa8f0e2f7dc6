"""train.num_seeds=k: k models trained in one vmapped step are the k plain runs seed..seed+k-1 (same
losses, same data, same evaluation), each with its own run record; resume after a kill; bad values
fail with the key named."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from archcmp.analysis.common.runs import load_runs
from archcmp.training.checkpoint import Checkpointer
from archcmp.training.settings import ConfigError
from archcmp.tracking.tracker import read_jsonl
from archcmp.training.group import check_placement
from archcmp.training.records import GROUP_FILE
from archcmp.training.records import record_failure as _record_failure
from archcmp.training.trainer import train
from hydra_cfg import compose_cfg
from train_procs import kill_at_checkpoint, train_cli

SEED, K = 3, 2
BASE = ["arch=decoder", "size=nano", "task=addition", "task.seq_len=24", "train.steps=12", "train.batch_size=8",
        "train.eval_examples=16", "train.eval_batch_size=8", "train.log_every=1", "train.eval_every=6",
        "train.checkpoint_every=4", "train.progress=false"]
REL = 1e-5  # vmapped matmuls may round differently from the unbatched ones (observed ~1e-7)


def _losses(run_dir):
    return [r["train_loss"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "train_loss" in r]


def _params(run_dir):
    ckpt = Checkpointer(Path(run_dir) / "checkpoints")
    state, meta = ckpt.restore()
    ckpt.close()
    return state["params"], meta


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("num_seeds")
    # What the command line records for a group that failed before it started (e.g. a config error).
    (root / "group").mkdir()
    failed = {"status": "failed", "error": "ConfigError: ...", "error_kind": "config"}
    (root / "group" / "summary.json").write_text(json.dumps(failed))
    group = train(compose_cfg([*BASE, f"seed={SEED}", f"train.num_seeds={K}"]), root / "group")
    plain = {s: train(compose_cfg([*BASE, f"seed={s}"]), root / f"plain{s}") for s in range(SEED, SEED + K)}
    return root, group, plain


def test_members_match_plain_runs_of_their_seeds(runs):
    root, group, plain = runs
    assert group["status"] == "complete" and group["seeds"] == [SEED, SEED + 1]
    for member in group["members"]:
        ref = plain[member["seed"]]
        mine = _losses(root / "group" / member["run_name"])
        theirs = _losses(root / f"plain{member['seed']}")
        assert len(mine) == len(theirs) == 12
        np.testing.assert_allclose(mine, theirs, rtol=REL, atol=0)
        assert member["eval_loss"] == pytest.approx(ref["eval_loss"], rel=REL)
        for key, value in ref["eval_metrics"].items():
            assert member["eval_metrics"][key] == pytest.approx(value, rel=REL, abs=1e-7), key
        for key in ("data_fingerprint", "train_tokens", "examples_seen", "steps", "params_total", "train_flops"):
            assert member[key] == ref[key], key


def test_each_member_has_its_own_run_record(runs):
    root, group, _ = runs
    gdir = root / "group"
    names = [f"decoder-nano-addition-s{s}" for s in (SEED, SEED + 1)]
    assert [m["run_name"] for m in group["members"]] == names
    assert not (gdir / "summary.json").exists()  # the group is not a run (an earlier failed record is gone)
    assert json.loads((gdir / GROUP_FILE).read_text())["members"] == names
    for i, name in enumerate(names):
        d = gdir / name
        summary = json.loads((d / "summary.json").read_text())
        assert summary["seed"] == SEED + i and summary["status"] == "complete" and summary["run_name"] == name
        assert summary["ensemble"] == {"num_seeds": K, "member": i, "seeds": [SEED, SEED + 1],
                                       "group_dir": str(gdir)}
        assert Checkpointer(d / "checkpoints").latest_step() == 12
        member_cfg = (d / ".hydra" / "config.yaml").read_text()
        assert f"seed: {SEED + i}\n" in member_cfg and "num_seeds: 1\n" in member_cfg
    prints = [m["data_fingerprint"] for m in group["members"]]
    assert len(set(prints)) == K
    df = load_runs(gdir)  # what archcmp-analyze sees: k ordinary runs
    assert sorted(df["seed"]) == [SEED, SEED + 1] and set(df["status"]) == {"complete"}
    assert df["fingerprint_ok"].all()
    again = train(compose_cfg([*BASE, f"seed={SEED}", f"train.num_seeds={K}"]), gdir)
    assert again["skipped"] and [m["eval_loss"] for m in again["members"]] == [m["eval_loss"] for m in group["members"]]


def test_resume_when_killed_between_the_members_saves(runs, tmp_path):
    root, group, _ = runs
    gdir = tmp_path / "group"
    shutil.copytree(root / "group", gdir)
    first, second = (gdir / m["run_name"] for m in group["members"])
    shutil.rmtree(second / "checkpoints" / "12")  # killed after member 0 saved step 12, before member 1 did
    for d in (first, second):  # the summaries of a killed run
        (d / "summary.json").write_text(json.dumps({"status": "running"}))
    again = train(compose_cfg([*BASE, f"seed={SEED}", f"train.num_seeds={K}"]), gdir)
    assert again["status"] == "complete"
    for member, d in zip(group["members"], (first, second)):
        done = json.loads((d / "summary.json").read_text())
        assert done["resumed_from"] == 8 and done["eval_loss"] == member["eval_loss"]
        a, _ = _params(root / "group" / member["run_name"])
        b, meta = _params(d)
        assert meta["step"] == 12
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        steps = [r["step"] for r in read_jsonl(d / "metrics.jsonl") if "train_loss" in r]
        assert steps == list(range(1, 13))  # no duplicated rows after resume


@pytest.mark.slow
def test_killed_group_resumes_bit_exactly(tmp_path):
    args = [*BASE, "train.steps=60", "train.checkpoint_every=10", "train.eval_every=30", "train.log_every=5",
            f"seed={SEED}", f"train.num_seeds={K}"]
    names = [f"decoder-nano-addition-s{s}" for s in (SEED, SEED + 1)]
    kill_at_checkpoint([*args, "hydra.run.dir=killed"], tmp_path, tmp_path / "killed" / names[-1] / "checkpoints" / "10")
    summaries = [tmp_path / "killed" / n / "summary.json" for n in names]
    assert not all(p.exists() and json.loads(p.read_text())["status"] == "complete" for p in summaries), "too late"

    resumed = train_cli([*args, "hydra.run.dir=killed"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = train(compose_cfg(args), tmp_path / "full")
    for member, name in zip(full["members"], names):
        done = json.loads((tmp_path / "killed" / name / "summary.json").read_text())
        assert done["status"] == "complete" and 10 <= done["resumed_from"] < 60  # really resumed mid-run
        assert done["eval_loss"] == member["eval_loss"] and done["data_fingerprint"] == member["data_fingerprint"]
        a, _ = _params(tmp_path / "full" / name)
        b, meta = _params(tmp_path / "killed" / name)
        assert meta["step"] == 60
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_grad_accum_and_dropout_members_match_plain_runs(tmp_path):
    extra = [*BASE, "train.steps=6", "train.eval_every=6", "train.checkpoint_every=0", "train.grad_accum=2",
             "+model.dropout=0.1"]
    group = train(compose_cfg([*extra, f"seed={SEED}", f"train.num_seeds={K}"]), tmp_path / "group")
    for member in group["members"]:
        ref = train(compose_cfg([*extra, f"seed={member['seed']}"]), tmp_path / f"plain{member['seed']}")
        np.testing.assert_allclose(_losses(tmp_path / "group" / member["run_name"]),
                                   _losses(tmp_path / f"plain{member['seed']}"), rtol=REL, atol=0)
        assert member["eval_loss"] == pytest.approx(ref["eval_loss"], rel=REL)


@pytest.mark.parametrize("overrides, key", [
    (["train.num_seeds=0"], "train.num_seeds=0"),
    (["train.num_seeds=-2"], "train.num_seeds=-2"),
    (["train.num_seeds=2.5"], "train.num_seeds=2.5"),
    (["train.num_seeds=2", "mesh.fsdp=2"], "train.num_seeds=2"),
    (["train.num_seeds=2", "mesh.data=2"], "train.num_seeds=2"),
    (["train.num_seeds=2", "distributed.num_processes=2"], "train.num_seeds=2"),
    (["train.num_seeds=3", "train.tokens_per_param=0.05"], "train.num_seeds=3"),
])
def test_bad_values_name_the_key(overrides, key, tmp_path):
    with pytest.raises(ConfigError) as err:
        train(compose_cfg([*BASE, *overrides]), tmp_path)
    assert str(err.value).startswith(key), err.value


def test_a_mesh_is_refused_before_anything_compiles():
    with pytest.raises(ConfigError, match=r"^train\.num_seeds=4: .*one device"):
        check_placement(4, SimpleNamespace(trivial=False))
    check_placement(1, SimpleNamespace(trivial=False))  # k=1 runs on any mesh


def test_a_group_failing_before_its_first_step_records_it_in_every_member(tmp_path):
    names = ["r-s0", "r-s1"]
    (tmp_path / GROUP_FILE).write_text(json.dumps({"members": names}))
    _record_failure(str(tmp_path), OSError("disk full"))
    assert not (tmp_path / "summary.json").exists()
    for name in names:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary == {"status": "failed", "error": "OSError: disk full", "error_kind": "OSError",
                           "run_name": name}


def test_each_member_keeps_its_identity_and_other_settings_are_refused(runs, tmp_path):
    from archcmp.training.identity import RunRefused

    root, group, plain = runs
    gdir = tmp_path / "group"
    shutil.copytree(root / "group", gdir)
    before = {p: p.read_bytes() for p in gdir.rglob("*") if p.is_file() and p.name != ".lock"}
    first = gdir / group["members"][0]["run_name"]
    with pytest.raises(RunRefused, match=rf"{first}.*optimizer.lr: 0.003 -> 0.01"):
        train(compose_cfg([*BASE, f"seed={SEED}", f"train.num_seeds={K}", "optimizer.lr=0.01"]), gdir)
    assert {p: p.read_bytes() for p in gdir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # a member's identity is the identity of the plain run of its seed (num_seeds=1 either way)
    member = json.loads((first / "identity.json").read_text())
    alone = json.loads((root / f"plain{SEED}" / "identity.json").read_text())
    assert member["hash"] == alone["hash"] and member["settings"]["train"]["num_seeds"] == 1
