"""Emergence probe end to end (archcmp-analyze emergence / grokking) and the exact-match
evaluation the trainer logs (train vs validation answers, for grokking)."""
import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from archcmp.analysis.cli import main as analyze
from archcmp.data import make_task
from archcmp.model.objectives import answer_exact_sums
from archcmp.tracking.tracker import read_jsonl
from archcmp.training.trainer import train
from figures import png_pixels
from hydra_cfg import TINY, compose_cfg

# modular a+b mod 11 (121 pairs): single-token-plus-EOS answers, so a few steps already give
# non-trivial exact match; two kept checkpoints per run (steps 20 and 40).
SMALL = [o for o in TINY if not o.startswith(("size=", "train.steps", "train.eval_every", "train.checkpoint_every",
                                              "task.seq_len", "train.eval_examples"))]
MOD = ["task=modular", "task.params.p=11", "task.params.train_frac=0.4", "task.seq_len=16", "size=femto", "train.steps=40", "train.eval_every=20",
       "train.checkpoint_every=20", "train.keep_checkpoints=5", "train.eval_examples=64", "optimizer.lr=1e-2",
       *SMALL]


def _answer_batch(logits_ok: list[bool]):
    """Two packed examples in one row (answers of 2 tokens each), targets at known positions."""
    T, V = 8, 5
    targets = np.array([[0, 3, 2, 0, 4, 2, 0, 0]])
    eval_weights = np.array([[0, 1, 1, 0, 1, 1, 0, 0]], np.float32)
    segment_ids = np.array([[1, 1, 1, 2, 2, 2, 0, 0]])
    logits = np.zeros((1, T, V), np.float32)
    for t in range(T):
        logits[0, t, targets[0, t]] = 5.0
    for t, ok in zip((1, 2, 4, 5), logits_ok):
        if not ok:
            logits[0, t] = 0.0
            logits[0, t, (targets[0, t] + 1) % V] = 5.0
    batch = {"targets": jnp.asarray(targets), "eval_weights": jnp.asarray(eval_weights),
             "segment_ids": jnp.asarray(segment_ids)}
    return jnp.asarray(logits), batch


@pytest.mark.parametrize("ok, exact", [([True] * 4, 2), ([True, True, True, False], 1), ([False, True, True, False], 0)])
def test_answer_exact_sums_counts_whole_packed_answers(ok, exact):
    sums = answer_exact_sums(*_answer_batch(ok))
    assert float(sums["eval_answer_count"]) == 2
    assert float(sums["eval_exact_sum"]) == exact


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("emergence")
    runs = {}
    for arch, wd in (("decoder", 1.0), ("encoder", 0.0)):
        cfg = compose_cfg([f"arch={arch}", *MOD, f"optimizer.weight_decay={wd}", "train.eval_train_examples=1000"])
        run_dir = root / f"{arch}-wd{wd}"
        (run_dir / ".hydra").mkdir(parents=True)  # what Hydra writes for a real run
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
        runs[arch] = train(cfg, run_dir)
    return root, runs


@pytest.mark.slow  # trains two runs, then decodes every kept checkpoint
def test_training_logs_train_and_validation_exact_match(sweep):
    root, runs = sweep
    for arch, summary in runs.items():
        rows = [r for r in read_jsonl(next(root.glob(f"{arch}-*")) / "metrics.jsonl") if "eval_loss" in r]
        assert [r["step"] for r in rows] == [20, 40]
        for r in rows:
            assert 0.0 <= r["eval_exact_match"] <= r["eval_accuracy"] <= 1.0
            assert 0.0 <= r["train_exact_match"] <= 1.0 and r["train_eval_loss"] > 0
        assert summary["eval_metrics"]["eval_exact_match"] == rows[-1]["eval_exact_match"]
    # lr 1e-2 on 49 training pairs: the answers are being memorised
    assert max(s["eval_metrics"]["train_exact_match"] for s in runs.values()) > 0.1


@pytest.mark.slow  # trains two runs, then decodes every kept checkpoint
def test_emergence_cli_end_to_end(sweep, tmp_path):
    root, runs = sweep
    out = tmp_path / "out"
    # validation split, 64 examples: the very examples the trainer scored, so greedy exact match
    # of the probe must equal the trainer's teacher-forced eval_exact_match.
    assert analyze(["emergence", str(root), "--out", str(out), "--split", "validation", "--examples", "64",
                    "--steps", "all", "--bootstrap", "200", "--criterion"]) == 0
    for name in ("table.md", "metrics.csv", "smoothness.csv", "pl_check.csv", "examples.csv.gz"):
        assert (out / name).stat().st_size > 0, name
    for name in ("scaling.png", "pl_check.png", "sharp_vs_smooth.png", "steps.png"):
        assert min(png_pixels(out / name).shape[:2]) >= 200, name  # a real picture, not an empty canvas
    ex = pd.read_csv(out / "examples.csv.gz")
    assert set(ex["arch"]) == {"decoder", "encoder"} and set(ex["step"]) == {20, 40}
    n_val = make_task("modular", p=11, train_frac=0.4).size("validation")  # 37 < 64: the whole split
    assert (ex.groupby(["run", "step"]).size() == n_val).all()
    assert ex["exact_match"].isin([0, 1]).all()
    assert (ex["exact_match"] <= ex["token_accuracy"] + 1e-12).all()
    assert ((ex["token_accuracy"] >= 0) & (ex["token_accuracy"] <= 1)).all()
    assert (ex["edit_distance"] >= 0).all() and ((ex["edit_distance"] == 0) == (ex["exact_match"] == 1)).all()
    # The teacher-forced columns come from one set of probabilities, so they are tied together (each
    # inequality fails if a column is taken at the wrong positions or from other logits):
    # geometric mean <= arithmetic mean of the target-token probabilities, with room in between ...
    n_tok = ex["target_len"].to_numpy(float)
    geo, arith = np.exp(ex["target_loglik"] / n_tok), ex["mean_token_prob"]
    assert (geo <= arith + 1e-9).all() and (arith <= 1).all() and (geo < arith - 1e-6).any()
    # ... and per token (1 - p_y)^2 <= brier_token <= 2 (1 - p_y), so over an answer brier >= (1 - mean p)^2.
    assert (ex["brier"] >= (1 - arith) ** 2 - 1e-9).all() and (ex["brier"] <= 2 * (1 - geo) + 1e-9).all()
    # greedy decoding and teacher-forced argmax agree on exact match (both archs, every example)
    np.testing.assert_array_equal(ex["exact_match"], ex["tf_exact_match"])
    final = ex[ex["step"] == 40].groupby("arch")["exact_match"].mean()
    for arch, summary in runs.items():
        assert final[arch] == pytest.approx(summary["eval_metrics"]["eval_exact_match"])
    assert 0 < final.max()  # non-trivial outputs
    m = pd.read_csv(out / "metrics.csv")
    em_rows = m[m["metric"] == "exact_match"]
    assert ((em_rows["lo"] <= em_rows["mean"]) & (em_rows["mean"] <= em_rows["hi"])).all()
    # one size per architecture: no breakthroughness, so the criterion is undecided (not met/not failed)
    verdict = json.loads((out / "criterion.json").read_text())
    assert verdict["met"] is None and verdict["status"].startswith("undecided") and verdict["n_seeds"] == 1 and set(verdict["per_arch"]) == {"decoder", "encoder"}
    ss = pd.read_csv(out / "seed_smoothness.csv")
    assert set(ss["arch"]) == {"decoder", "encoder"} and (ss["n_scales"] == 1).all() and ss["B"].isna().all()
    assert "operand_digits" not in ex.columns  # modular prompts carry no column-arithmetic features
    table = (out / "table.md").read_text()
    assert "Breakthroughness" in table and "p^L check" in table and "one data fingerprint" in table


def test_emergence_cli_errors_name_the_problem(tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    assert analyze(["emergence", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err
    assert analyze(["emergence", str(empty), "--top-p", "2"]) == 2
    assert "decode.top_p=2.0" in capsys.readouterr().err


@pytest.mark.slow  # trains two runs, then decodes every kept checkpoint
def test_grokking_cli_writes_curves_table_and_figure(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "grok"
    assert analyze(["grokking", str(root), "--out", str(out)]) == 0
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["weight_decay"]) == {0.0, 1.0}
    assert set(curves["step"]) == {20, 40}
    assert curves[["train_acc", "val_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert min(png_pixels(out / "grokking.png").shape[:2]) >= 200
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["arch"], r["weight_decay"]) for r in summary} == {("decoder", 1.0), ("encoder", 0.0)}
    assert "| decoder |" in (out / "table.md").read_text()
