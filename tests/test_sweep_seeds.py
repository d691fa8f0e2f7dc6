"""archcmp-analyze sweep: labels from config format strings, metrics from summaries and curves."""
import json

import pandas as pd
import pytest
import yaml

from archcmp.analysis.seeds import sweep as sweep_seeds
from archcmp.claims.evidence import read_seed_table


def _run(root, name, *, seed, norm, lr, eval_loss, losses, status="complete", error_kind=None, error=None):
    rd = root / name
    rd.mkdir(parents=True)
    (rd / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": lr}, "size": {"name": "pico"}}))
    (rd / "summary.json").write_text(json.dumps({
        "seed": seed, "status": status, "error_kind": error_kind, "error": error, "steps": len(losses),
        "model": {"norm_position": norm, "n_layers": 2},
        "eval_metrics": {"eval_loss": eval_loss, "eval_exact_match": 0.5}}))
    with open(rd / "metrics.jsonl", "w") as fh:
        for i, v in enumerate(losses):
            fh.write(json.dumps({"step": i + 1, "train_loss": v}) + "\n")


def test_export_labels_metrics_and_divergence(tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep, "a", seed=0, norm="pre", lr=0.003, eval_loss=1.0, losses=[2.6, 1.5, 1.0])
    _run(sweep, "b", seed=1, norm="pre", lr=0.003, eval_loss=1.2, losses=[2.6, 1.6, 1.1])
    _run(sweep, "c", seed=0, norm="post", lr=0.003, eval_loss=2.9, losses=[2.6, 2.5, 2.7])  # ends above start
    _run(sweep, "d", seed=1, norm="post", lr=0.003, eval_loss=float("nan"), losses=[2.6, 9.0],
         status="failed", error_kind="FloatingPointError")
    msg = "FloatingPointError: non-finite loss or gradient at step 2 (loss=nan, member d); ..."
    _run(sweep, "f", seed=3, norm="post", lr=0.003, eval_loss=float("nan"), losses=[2.6, 2.0],
         status="failed", error_kind="FloatingPointError", error=msg)  # stopped by seed "d": no outcome
    _run(sweep, "e", seed=2, norm="post", lr=0.003, eval_loss=1.0, losses=[2.6, 1.0],
         status="failed", error_kind="OSError")  # not a divergence: left out
    out = tmp_path / "out"
    paths = sweep_seeds.export(sweep, out, "L{model.n_layers}/lr{optimizer.lr:g}", "{model.norm_position}",
                               {"diverged": "diverged", "eval_loss": "eval_loss"}, "t")
    assert [p.name for p in paths] == ["seeds.csv", "runs.csv", "table.md", "seeds.png", "curves.png"]
    seeds = read_seed_table(out / "seeds.csv")
    got = {(r.group, r.seed, r.metric): r.value for r in seeds.itertuples()}
    assert set(seeds["condition"]) == {"L2/lr0.003"}
    assert got[("pre", 0, "diverged")] == 0 and got[("pre", 1, "diverged")] == 0
    assert got[("post", 0, "diverged")] == 1 and got[("post", 1, "diverged")] == 1
    assert got[("pre", 1, "eval_loss")] == pytest.approx(1.2)
    assert pd.isna(got[("post", 1, "eval_loss")])  # the failed run has no final evaluation
    assert ("post", 2, "diverged") not in got
    assert pd.isna(got[("post", 3, "diverged")])
    runs = pd.read_csv(out / "runs.csv")
    assert runs.set_index("run").loc["e", "status"] == "failed"
    table = (out / "table.md").read_text()
    # pre eval loss: mean 1.1, t-interval 1.1 +- 12.706 * 0.1414 / sqrt(2) = [-0.1706, 2.371]
    assert "| eval_loss | L2/lr0.003 | pre | 1.1 [-0.1706, 2.371] | 2 |" in table


def test_labels_that_do_not_separate_runs_are_refused(tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep, "a", seed=0, norm="pre", lr=0.003, eval_loss=1.0, losses=[2.6, 1.0])
    _run(sweep, "b", seed=0, norm="post", lr=0.003, eval_loss=1.0, losses=[2.6, 1.0])
    with pytest.raises(ValueError, match="do not tell the sweep's runs apart"):
        sweep_seeds.collect(sweep, "{size.name}", "x", {"eval_loss": "eval_loss"})
    with pytest.raises(ValueError, match="label '{model.nope}'"):
        sweep_seeds.collect(sweep, "{model.nope}", "x", {"eval_loss": "eval_loss"})
    with pytest.raises(ValueError, match="has no 'eval_bogus'"):
        sweep_seeds.collect(sweep, "{size.name}", "{model.norm_position}", {"x": "eval_bogus"})
