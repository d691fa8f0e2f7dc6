"""train.early_stop: a rule that is met ends the run (a num_seeds group once every member has met
it), a rule never met trains to train.steps, a resumed run carries on counting its streak, bad
settings fail in one line naming the key, and the rule is part of the run's identity."""
import json
import shutil
from pathlib import Path

import pytest

from archcmp.model.config import ConfigError
from archcmp.tracking.tracker import read_jsonl
from archcmp.training.early_stop import EarlyStop
from archcmp.training.evaluation import eval_metrics
from archcmp.training import early_stop
from archcmp.training.identity import RunRefused, identity_of
from archcmp.training.settings import parse
from archcmp.training.trainer import train
from hydra_cfg import compose_cfg

BASE = ["arch=decoder", "size=nano", "task=addition", "task.seq_len=24", "train.steps=12", "train.batch_size=8",
        "train.eval_examples=16", "train.eval_batch_size=8", "train.log_every=1", "train.eval_every=2",
        "train.checkpoint_every=2", "train.keep_checkpoints=10", "train.progress=false", "logger=jsonl"]


def _rule(metric, threshold, hold):
    return [f"train.early_stop.metric={metric}", f"train.early_stop.threshold={threshold}",
            f"train.early_stop.hold={hold}"]


def _eval_steps(run_dir):
    return [r["step"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "eval_loss" in r]


def test_streak_counts_consecutive_passes_and_latches():
    rule = EarlyStop("eval_exact_match", 0.95, hold=3)
    counters = {}
    seq = [(10, 0.5), (20, 0.96), (30, 0.97), (40, 0.90), (50, 0.95), (60, 0.99), (70, 1.0), (80, 0.1)]
    met = []
    for step, value in seq:
        rule.update(counters, {"eval_exact_match": value}, step)
        met.append(rule.met(counters))
    # the dip at step 40 restarts the count: 50, 60, 70 are the three in a row; then it stays met
    assert met == [False, False, False, False, False, False, True, True]
    assert counters[early_stop.MET_AT] == 70
    loss_rule = EarlyStop("eval_loss", 2.0, hold=1)  # a loss passes at or below the threshold
    assert loss_rule.passes({"eval_loss": 2.0}) and not loss_rule.passes({"eval_loss": 2.01})
    assert not loss_rule.passes({"eval_loss": float("nan")})


def test_every_watchable_metric_is_one_evaluation_reports():
    sums = {"eval_loss_sum": 2.0, "eval_correct_sum": 1.0, "eval_weight_sum": 4.0, "obj_loss_sum": 2.0,
            "obj_correct_sum": 1.0, "obj_weight_sum": 4.0, "eval_exact_sum": 1.0, "eval_answer_count": 2.0}
    reported = eval_metrics(sums, sums, sums, 10)
    assert set(early_stop.METRICS) == set(reported)


def test_a_rule_met_early_ends_the_run_and_is_recorded(tmp_path):
    # eval_loss <= 100 holds from the first evaluation: two in a row at steps 2 and 4
    summary = train(compose_cfg([*BASE, *_rule("eval_loss", 100, 2)]), tmp_path / "run")
    assert summary["status"] == "complete" and summary["step"] == 4 and summary["stopped_at"] == 4
    assert summary["steps"] == 12  # the budget (and the schedule) is unchanged
    assert summary["stop_reason"].startswith("early_stop: eval_loss <= 100 at 2 consecutive evaluations")
    assert summary["early_stop"] == {"metric": "eval_loss", "threshold": 100.0, "hold": 2, "met_at": 4}
    assert _eval_steps(tmp_path / "run") == [2, 4]
    assert max(r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "train_loss" in r) == 4
    assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


def test_a_rule_never_met_trains_to_the_step_budget(tmp_path):
    summary = train(compose_cfg([*BASE, *_rule("eval_loss", 0.001, 1)]), tmp_path / "run")
    assert summary["status"] == "complete" and summary["step"] == summary["stopped_at"] == 12
    assert summary["stop_reason"] == "train.steps=12 reached (early_stop eval_loss <= 0.001 at 1 evaluation not met)"
    assert summary["early_stop"]["met_at"] is None
    plain = train(compose_cfg(BASE), tmp_path / "plain")
    assert plain["stop_reason"] == "train.steps=12 reached" and "early_stop" not in plain
    assert plain["eval_loss"] == summary["eval_loss"]  # the rule changes nothing until it is met


def test_a_group_stops_when_its_last_member_meets_the_rule(tmp_path):
    full = train(compose_cfg([*BASE, "seed=3", "train.num_seeds=2"]), tmp_path / "full")
    names = [m["run_name"] for m in full["members"]]
    losses = [{r["step"]: r["eval_loss"] for r in read_jsonl(tmp_path / "full" / n / "metrics.jsonl")
               if "eval_loss" in r} for n in names]

    def first(member, th):
        return next((s for s, v in sorted(losses[member].items()) if v <= th), None)

    # a threshold the two members first reach at different evaluations
    th = next(v for v in sorted({v for d in losses for v in d.values()})
              if None not in (first(0, v), first(1, v)) and first(0, v) != first(1, v))
    met = [first(0, th), first(1, th)]
    group = train(compose_cfg([*BASE, "seed=3", "train.num_seeds=2", *_rule("eval_loss", th, 1)]), tmp_path / "es")
    for member, met_at in zip(group["members"], met):
        assert member["stopped_at"] == max(met) and member["early_stop"]["met_at"] == met_at
    assert _eval_steps(tmp_path / "es" / names[0])[-1] == max(met)


def test_a_resumed_run_carries_on_its_streak(tmp_path):
    args = [*BASE, *_rule("eval_loss", 100, 3)]
    run = tmp_path / "run"
    first = train(compose_cfg(args), run)
    assert first["stopped_at"] == 6  # passes at 2, 4, 6
    # As if it had been killed after the checkpoint of step 4: the streak (2) comes back with it, so
    # it stops at step 6 again (a restarted count would run to step 10).
    shutil.rmtree(run / "checkpoints" / "6")
    (run / "summary.json").unlink()
    again = train(compose_cfg(args), run)
    assert again["resumed_from"] == 4 and again["stopped_at"] == 6 and again["early_stop"]["met_at"] == 6
    # Resumed after the stop (its last checkpoint is the stop's): it ends at once, training nothing.
    (run / "summary.json").unlink()
    rows = len(read_jsonl(run / "metrics.jsonl"))
    last = train(compose_cfg(args), run)
    assert last["resumed_from"] == 6 and last["stopped_at"] == 6 and last["status"] == "complete"
    assert not [r for r in read_jsonl(run / "metrics.jsonl")[rows:] if "train_loss" in r]


@pytest.mark.parametrize("overrides, message", [
    (_rule("eval_acc", 0.9, 1), r"^train\.early_stop\.metric='eval_acc': not an evaluation metric"),
    (_rule("eval_exact_match", 1.5, 1), r"^train\.early_stop\.threshold=1\.5: eval_exact_match is a fraction"),
    (_rule("eval_loss", -1, 1), r"^train\.early_stop\.threshold=-1: eval_loss is a loss"),
    (_rule("eval_loss", 1, 0), r"^train\.early_stop\.hold=0: must be a positive integer"),
    (_rule("train_exact_match", 0.9, 1), r"^train\.early_stop\.metric='train_exact_match': needs "
                                          r"train\.eval_train_examples > 0"),
    (["train.early_stop.metric=eval_loss"], r"^train\.early_stop\.threshold=None: set the value"),
    (["train.early_stop.threshold=0.5"], r"^train\.early_stop\.threshold=0\.5: set train\.early_stop\.metric"),
    (["train.early_stop.threshold=high", "train.early_stop.metric=eval_loss"],
     r"^train\.early_stop\.threshold='high': must be a number"),
    (["+train.early_stop.patience=3"], r"^train\.early_stop\.patience=3: unknown key"),
])
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse(compose_cfg([*BASE, *overrides]))
    assert "\n" not in str(err.value)


def test_the_rule_is_part_of_the_identity(tmp_path):
    train(compose_cfg([*BASE, *_rule("eval_loss", 100, 2)]), tmp_path / "run")
    with pytest.raises(RunRefused, match=r"train\.early_stop\.hold: 2 -> 3"):
        train(compose_cfg([*BASE, *_rule("eval_loss", 100, 3)]), tmp_path / "run")
    # no rule (metric unset) is the identity runs had before the setting existed
    resolved = {"train": {"steps": 5, "early_stop": {"metric": None, "threshold": None, "hold": 1}}}
    assert identity_of(resolved) == {"train": {"steps": 5}}
    ruled = {"train": {"steps": 5, "early_stop": {"metric": "eval_loss", "threshold": 1.0, "hold": 1}}}
    assert identity_of(ruled)["train"]["early_stop"]["metric"] == "eval_loss"
