"""Training: losses fall, identical data across architectures, resume is bit-exact, bad input
fails in one line, wandb offline runs hold the metrics."""
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from archcmp.training.checkpoint import Checkpointer
from archcmp.model.config import ModelConfig
from archcmp.data import BatchIterator, make_formatter, make_task
from archcmp.model.models import build_model
from archcmp.training.optim import make_optimizer
from archcmp.training.settings import OptimSettings
from archcmp.training.steps import make_train_step, split_microbatches
from archcmp.tracking.tracker import read_jsonl
from archcmp.training.trainer import train
from hydra_cfg import TINY, compose_cfg
from train_procs import kill_at_checkpoint, train_cli
from wandb_files import offline_history, offline_summary

ARCHS = ["encoder", "decoder", "prefix_lm", "encdec"]
OPT = OptimSettings(lr=3e-3, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8, warmup_steps=0, min_lr_ratio=1.0,
                    clip_norm=1.0)


def _setup(arch, batch_size=8, objective="task"):
    task = make_task("addition", digits=[1, 3])
    fmt = make_formatter(arch, 24, 24 if arch == "encdec" else None, objective=objective,
                         vocab_size=task.tokenizer.vocab_size)
    batch = next(BatchIterator(task, "train", 0, batch_size, fmt))
    cfg = ModelConfig(arch=arch, vocab_size=task.tokenizer.vocab_size, d_model=32, n_heads=4, d_ff=64,
                      n_layers=2, max_len=24, pos_encoding="rope")
    graphdef, params = nnx.split(build_model(cfg, 0))
    return batch, graphdef, params


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_when_overfitting_a_fixed_batch(arch):
    batch, graphdef, params = _setup(arch)
    tx = make_optimizer(OPT, 60)
    step = make_train_step(graphdef, tx, 1)
    state = {"params": params, "opt_state": tx.init(params)}
    losses = []
    for _ in range(60):
        state, m = step(state, split_microbatches(batch, 1), None)
        losses.append(float(m["train_loss"]))
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_gradient_accumulation_matches_one_big_batch():
    batch, graphdef, params = _setup("decoder")
    tx = make_optimizer(OPT, 10)
    outs = []
    for accum in (1, 2, 4):
        p = jax.tree.map(lambda x: x.copy(), params)
        state, m = make_train_step(graphdef, tx, accum)({"params": p, "opt_state": tx.init(p)},
                                                        split_microbatches(batch, accum), None)
        outs.append((state["params"], float(m["train_loss"]), float(m["grad_norm"])))
    for p, loss, gnorm in outs[1:]:
        assert loss == pytest.approx(outs[0][1], rel=1e-5)
        assert gnorm == pytest.approx(outs[0][2], rel=1e-5)  # same mean gradient, not a sum or a part
        # Adam's first update is ~lr·sign(g): summation-order rounding on near-zero gradient
        # entries may move a parameter by a fraction of lr (3e-3), never by a whole step; all
        # but a handful of entries agree to 1e-6.
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(outs[0][0])):
            a, b = np.asarray(a), np.asarray(b)
            np.testing.assert_allclose(a, b, rtol=0, atol=0.1 * OPT.lr)
            assert np.mean(np.abs(a - b) > 1e-6) < 1e-3


@pytest.fixture(scope="module")
def four_runs(tiny_runs):  # the session's shared tiny runs (tests/conftest.py)
    return {arch: tiny_runs[arch][1] for arch in ARCHS}


def test_four_architectures_see_identical_data(four_runs, tmp_path):
    prints = {a: s["data_fingerprint"] for a, s in four_runs.items()}
    assert len(set(prints.values())) == 1, prints
    assert len({s["train_tokens"] for s in four_runs.values()}) == 1
    other_seed = train(compose_cfg(["arch=decoder", "seed=1", *TINY]), tmp_path)
    assert other_seed["data_fingerprint"] != prints["decoder"]


def test_run_records_hold_the_documented_keys(four_runs, tmp_path):
    keys = {"arch", "size", "params_total", "params_nonembedding", "flops_per_token", "train_tokens", "train_flops",
            "eval_loss", "eval_metrics", "data_fingerprint", "tokens_per_sec", "wall_seconds", "status"}
    for arch, summary in four_runs.items():
        assert keys <= summary.keys(), keys - summary.keys()
        assert summary["status"] == "complete" and summary["arch"] == arch
        assert np.isfinite(summary["eval_loss"]) and summary["eval_loss"] > 0
        assert {"eval_accuracy", "eval_bpc", "eval_objective_loss"} <= summary["eval_metrics"].keys()
        assert summary["train_flops"] == pytest.approx(summary["flops_per_token"] * summary["train_tokens"])


def test_complete_run_is_skipped_on_relaunch(tiny_runs, tmp_path):
    done_dir, first = tiny_runs["decoder"]  # the session's finished run with these very settings
    shutil.copytree(done_dir, tmp_path, dirs_exist_ok=True)
    again = train(compose_cfg(["arch=decoder", *TINY]), tmp_path)
    assert again.get("skipped") and again["eval_loss"] == first["eval_loss"]
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4]
    # the run directory holds the config with every interpolation resolved
    resolved = (tmp_path / "config.yaml").read_text()
    assert "run_name: decoder-nano-addition-s0" in resolved and "${" not in resolved, resolved[:400]


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = compose_cfg(["arch=decoder", *TINY, "train.steps=20", "train.checkpoint_every=1", "optimizer.lr=1e30",
                       "optimizer.warmup_steps=0"])
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step") as err:
        train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "FloatingPointError" in summary["error"]
    bad_step = summary["step"] + 1  # the step whose loss was not finite
    ckpt = Checkpointer(tmp_path / "checkpoints")
    last_good = ckpt.latest_step()
    state, meta = ckpt.restore()
    ckpt.close()
    assert last_good == summary["step"] < bad_step and f"last good checkpoint is step {last_good}" in str(err.value)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


# ---- subprocess tests: the real command line -------------------------------------------------
@pytest.mark.parametrize("args, key", [
    (["arch=gpt5"], "arch='gpt5'"),
    (["train.steps=-1"], "train.steps=-1"),
    (["task=null"], "task=null"),
    (["task=nope"], "task='nope'"),
    (["-m", "arch=decoder,encdec", "train.steps=-1"], "train.steps=-1"),  # a sweep: one line, not one per job
    (["experiment=quickstart", "train.steps=0"], "train.steps=0"),
])
def test_bad_overrides_exit_nonzero_with_one_line(args, key, tmp_path):
    out = train_cli(args, tmp_path)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0], out.stderr


@pytest.mark.slow
def test_wandb_offline_runs_hold_the_logged_metrics(tmp_path):
    out = train_cli(["-m", "arch=encoder,decoder,prefix_lm,encdec", "logger=wandb", "task=addition",
                "experiment_name=wb", *TINY], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for arch in ARCHS:
        run_dir = tmp_path / "multirun" / "wb" / f"{arch}-nano-addition-s0"
        logged = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r}
        history = offline_history(run_dir)
        assert logged, arch
        for step, row in logged.items():
            assert history[step]["train_loss"] == pytest.approx(row["train_loss"], rel=1e-7)
        assert "eval_loss" in history[4]
        # the run record's summary reaches wandb too (before the wandb run is closed)
        summary, on_disk = offline_summary(run_dir), json.loads((run_dir / "summary.json").read_text())
        for key in ("params_total", "flops_per_token", "data_fingerprint", "status"):
            assert summary[key] == on_disk[key], (arch, key)
        assert summary["status"] == "complete"


def _final_params(run_dir):
    ckpt = Checkpointer(Path(run_dir) / "checkpoints")
    state, meta = ckpt.restore()
    ckpt.close()
    return state["params"], meta


@pytest.mark.slow
def test_killed_run_resumes_bit_exactly(tmp_path):
    args = ["arch=decoder", "size=nano", "train.steps=120", "train.checkpoint_every=10", "train.eval_every=60",
            "train.batch_size=8", "train.progress=false", "train.log_every=5", "task.seq_len=24"]
    full = train_cli([*args, "hydra.run.dir=full"], tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]

    kill_at_checkpoint([*args, "hydra.run.dir=killed"], tmp_path, tmp_path / "killed" / "checkpoints" / "10")
    summary = tmp_path / "killed" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] != "complete", "killed too late"

    resumed = train_cli([*args, "hydra.run.dir=killed"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = json.loads(summary.read_text())
    assert done["status"] == "complete" and 10 <= done["resumed_from"] < 120  # really resumed mid-run
    a, meta_a = _final_params(tmp_path / "full")
    b, meta_b = _final_params(tmp_path / "killed")
    assert meta_a["step"] == meta_b["step"] == 120
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["eval_loss"] == done["eval_loss"]
    steps = [r["step"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl") if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # no duplicated rows after resume
