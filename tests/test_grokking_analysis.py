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


# ---- across architectures and training fractions (archcmp.analysis.grokking.across) ------------
from archcmp.analysis.grokking import across  # noqa: E402


def _runs(spec):
    """spec: {(arch, frac): [(t_train, t_val or None) per seed]} -> summarize()'s per-run table."""
    parts = []
    for (arch, frac), seeds in spec.items():
        for s, (t_train, t_val) in enumerate(seeds):
            parts.append(_curve(f"{arch}{frac}{s}", 1.0, s, t_train, t_val, steps=np.arange(0, 5001, 10))
                         .assign(arch=arch, train_frac=frac))
    return summarize(pd.concat(parts), 0.95, 0.99, 5)


def test_group_verdicts_intervals_and_censoring():
    t = _runs({("decoder", 0.4): [(100, 1000), (100, 1200), (100, 1400)],
               ("encoder", 0.4): [(100, 1000), (100, None), (100, 2000)],
               ("encdec", 0.4): [(100, 1000), (200, 600), (100, 1000)]})
    g = across.group_verdicts(t).set_index("arch")
    dec = g.loc["decoder"]
    half = 4.302652729911275 * 200 / np.sqrt(3)  # t_{0.975,2} * sd([1000, 1200, 1400]) / sqrt(3)
    assert dec["groks_every_seed"] and not dec["censored"] and dec["n_grokked"] == 3
    np.testing.assert_allclose([dec["val_reached_at"], dec["val_reached_at_lo"], dec["val_reached_at_hi"]],
                               [1200, 1200 - half, 1200 + half])
    np.testing.assert_allclose(dec["delay_ratio"], 12.0)
    enc = g.loc["encoder"]  # one seed never generalised: censored, no interval, not every seed
    assert enc["censored"] and enc["n_generalised"] == 2 and not enc["groks_every_seed"]
    assert np.isnan(enc["val_reached_at_lo"]) and np.isnan(enc["delay_ratio_hi"])
    assert enc["val_reached_at_per_seed"] == [1000.0, None, 2000.0]
    ed = g.loc["encdec"]  # seed 1 generalised only 3x after memorising: not grokked
    assert ed["n_generalised"] == 3 and ed["n_grokked"] == 2 and not ed["groks_every_seed"]
    assert list(g.index) == ["encoder", "decoder", "encdec"]  # ARCH_ORDER


def test_compare_archs_calls_only_non_overlapping_intervals():
    t = _runs({("decoder", 0.4): [(100, 1000), (100, 1050), (100, 1100)],
               ("prefix_lm", 0.4): [(100, 2000), (100, 2100), (100, 2200)],
               ("encdec", 0.4): [(100, 500), (100, 1500), (100, 2500)],
               ("encoder", 0.4): [(100, 1000), (100, None), (100, 1000)]})
    pairs = across.compare_archs(across.group_verdicts(t))
    verdict = {(r["a"], r["b"]): r["a_vs_b"] for _, r in pairs.iterrows()}
    assert verdict[("decoder", "prefix_lm")] == "earlier"
    assert verdict[("prefix_lm", "encdec")] == "unresolved"  # wide interval overlaps
    assert verdict[("encoder", "decoder")] == "unresolved"  # censored: no interval
    assert len(pairs) == 6


def test_fraction_slope_recovers_a_known_exponential_trend():
    # t_val = 10 ** (4 - 2.5 f) times a seed factor (to the 10-step grid): log10 slope -2.5 (shrinks with more data)
    factors = [0.9, 1.0, 1.1]
    spec = {("decoder", f): [(10, 10 * round(10 ** (3 - 2.5 * f) * k)) for k in factors] for f in (0.2, 0.4, 0.6)}
    spec[("encoder", 0.4)] = [(10, 1000)] * 3  # one fraction only: no trend
    s = across.fraction_slopes(_runs(spec)).set_index("arch")
    assert abs(s.loc["decoder", "slope"] + 2.5) < 0.02 and s.loc["decoder", "trend"] == "shrinks with more data"
    assert s.loc["decoder", "slope_lo"] < -2.5 < s.loc["decoder", "slope_hi"] < 0
    assert s.loc["encoder", "trend"] == "too few fractions" and np.isnan(s.loc["encoder", "slope"])


def test_threshold_fraction_and_across_criterion():
    spec = {("decoder", 0.3): [(100, None), (100, 2000), (100, None)],
            ("decoder", 0.4): [(100, 1000)] * 3}
    for arch in ("encoder", "prefix_lm", "encdec"):
        spec[(arch, 0.4)] = [(100, 900)] * 3
    t = _runs(spec)
    seeds = across.threshold_fractions(t)
    thr = seeds[(seeds["metric"] == "threshold_task_fraction") & (seeds["condition"] == "decoder")]
    assert thr.sort_values("seed")["value"].tolist() == [0.4, 0.3, 0.4]
    assert set(seeds.columns) == {"condition", "group", "seed", "metric", "value"}
    groups = across.group_verdicts(t)
    v = across.across_criterion(groups, 0.4, fractions=[0.4, 0.3])
    assert v["met"] and v["decided"] and v["partial"] and v["n_seeds"] == 3
    assert sorted(map(tuple, v["missing_groups"])) == [("encdec", 0.3), ("encoder", 0.3), ("prefix_lm", 0.3)]
    assert v["n_groups_expected"] == 8 and v["n_groups_complete"] == 5  # 4 at 0.4, the decoder at 0.3
    # an architecture not run at the reference fraction: not met, not decided
    v = across.across_criterion(groups[groups["arch"] != "encdec"], 0.4)
    assert not v["met"] and not v["decided"] and v["missing_groups"] == [["encdec", 0.4]]
    # one architecture delayed on only two seeds: not met
    spec[("encdec", 0.4)] = [(100, 900), (100, 300), (100, 900)]
    assert not across.across_criterion(across.group_verdicts(_runs(spec)), 0.4)["met"]


def test_runs_still_training_leave_a_group_undecided_until_settled():
    spec = {("decoder", 0.4): [(100, 1000)] * 3, ("encoder", 0.4): [(100, 1000), (100, None), (100, 1000)]}
    t = _runs(spec)
    running = t.assign(complete=t["arch"] == "decoder")  # the encoder runs are still training
    g = across.group_verdicts(running).set_index("arch")
    assert g.loc["decoder", "decided"] and not g.loc["encoder", "decided"]  # a seed may still grok
    v = across.across_criterion(g.reset_index(), 0.4, archs=("decoder", "encoder"))
    assert not v["met"] and not v["decided"] and v["undecided_archs"] == ["encoder"]
    assert across.group_verdicts(t.assign(complete=True)).set_index("arch").loc["encoder", "decided"]
    # a seed that generalised right after memorising settles the group (not met) while others run
    spec[("encoder", 0.4)] = [(100, 200), (100, None), (100, None)]
    t = _runs(spec)
    v = across.across_criterion(across.group_verdicts(t.assign(complete=t["arch"] == "decoder")), 0.4,
                                archs=("decoder", "encoder"))
    assert not v["met"] and v["decided"]


def test_across_figures_are_written(tmp_path):
    from matplotlib.image import imread

    spec = {("decoder", 0.3): [(100, None)] * 3, ("decoder", 0.4): [(100, 1000)] * 3,
            ("encoder", 0.4): [(100, 1000), (100, 1500), (100, None)]}
    parts = []
    for (arch, frac), seeds in spec.items():
        for s, (t_train, t_val) in enumerate(seeds):
            parts.append(_curve(f"{arch}{frac}{s}", 1.0, s, t_train, t_val).assign(arch=arch, train_frac=frac))
    curves = pd.concat(parts)
    t = summarize(curves, 0.95, 0.99, 5)
    t = t.assign(complete=t["arch"] == "decoder")  # the encoder still training: drawn as a lower bound
    across.plot_heldout_by_arch(curves, tmp_path / "a.png")
    across.plot_delay_vs_fraction(t, across.group_verdicts(t), tmp_path / "b.png")
    assert imread(tmp_path / "a.png").shape[1] >= 600 and imread(tmp_path / "b.png").shape[0] >= 300
