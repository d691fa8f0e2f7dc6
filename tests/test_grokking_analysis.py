"""The grokking analysis on constructed curves: a delayed held-out curve gives the right delay,
the criterion separates delayed from simultaneous generalisation."""
import numpy as np
import pandas as pd

from archcmp.analysis.grokking.cli import criterion, delays, first_step, summarize, t_interval


def _curve(run, wd, seed, t_train, t_val, steps=np.arange(0, 5001, 50)):
    """Train accuracy jumps to 1 at t_train, held-out at t_val (never if None)."""
    val = np.zeros(len(steps)) if t_val is None else (steps >= t_val).astype(float)
    return pd.DataFrame({"run": run, "arch": "decoder", "train_frac": 0.4, "weight_decay": wd, "seed": seed,
                         "step": steps, "train_acc": (steps >= t_train).astype(float) * 0.995 + 0.004,
                         "val_acc": 0.96 * val + 0.02, "train_loss": 1.0, "val_loss": 1.0})


def test_first_step_and_delay_of_constructed_curves():
    assert first_step(np.array([10, 20, 30]), np.array([0.5, 0.99, 1.0]), 0.99) == 20
    assert np.isnan(first_step(np.array([10, 20]), np.array([0.1, 0.2]), 0.95))
    curves = pd.concat([_curve("a", 1.0, 0, 200, 1500), _curve("b", 1.0, 1, 300, 900)])
    t = summarize(curves, threshold=0.95, train_threshold=0.99, grok_delay=5)
    assert t["train_reached_at"].tolist() == [200, 300]
    assert t["val_reached_at"].tolist() == [1500, 900]
    np.testing.assert_allclose(t["delay_ratio"], [7.5, 3.0])
    assert t["grokked"].tolist() == [True, False]


def test_criterion_needs_every_seed_delayed_and_the_control_later():
    on = [_curve(f"on{s}", 1.0, s, 100, 1000 + 100 * s) for s in range(3)]
    late_off = [_curve(f"off{s}", 0.0, s, 100, None) for s in range(3)]
    t = summarize(pd.concat(on + late_off), 0.95, 0.99, 5)
    verdict = criterion(t, 5)
    assert verdict["met"] and verdict["groups"][0]["all_seeds_delayed"]
    # a control that generalises before its weight-decay twin fails the criterion
    early_off = [_curve(f"off{s}", 0.0, s, 100, 500) for s in range(3)]
    assert not criterion(summarize(pd.concat(on + early_off), 0.95, 0.99, 5), 5)["met"]
    # one seed generalising together with memorisation fails it too
    mixed = on[:2] + [_curve("on2", 1.0, 2, 100, 150)] + late_off
    assert not criterion(summarize(pd.concat(mixed), 0.95, 0.99, 5), 5)["met"]
    agg = delays(t)
    row = agg[agg["weight_decay"] == 1.0].iloc[0]
    assert row["val_reached_at"] == 1100 and row["val_reached_at_lo"] < 1100 < row["val_reached_at_hi"]


def test_t_interval_matches_hand_computation():
    mean, lo, hi, n = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert n == 3 and mean == 2.0
    np.testing.assert_allclose([lo, hi], [2 - half, 2 + half])
