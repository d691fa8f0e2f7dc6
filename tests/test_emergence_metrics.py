"""Tests for archcmp.analysis.emergence.metrics / emergence_plots (small, CPU-cheap)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from archcmp.analysis.emergence import metrics as em
from archcmp.analysis.emergence import plots as ep
from figures import assert_saved, data_lines, visible_axes


def _ref_lev(a, b):
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[:], i
        for j in range(1, len(b) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1]


# ----------------------------------------------------------------------------- edit distance
@pytest.mark.parametrize("a,b,want", [
    ("kitten", "sitting", 3), ("", "abcde", 5), ("abcd", "", 4), ("same", "same", 0),
    ("", "", 0), ("flaw", "lawn", 2), ("abc", "cba", 2), ("a", "b", 1),
])
def test_levenshtein_known_pairs(a, b, want):
    assert em.levenshtein(list(a), list(b)) == want
    assert em.levenshtein(list(b), list(a)) == want


def test_edit_distance_batch_matches_reference_dp():
    rng = np.random.default_rng(0)
    n, w = 400, 12
    a = rng.integers(21, 24, (n, w))
    b = rng.integers(21, 24, (n, w))
    la, lb = rng.integers(0, w + 1, n), rng.integers(0, w + 1, n)
    got = em.edit_distance(a, b, pred_lengths=la, target_lengths=lb)
    want = [_ref_lev(list(a[i, :la[i]]), list(b[i, :lb[i]])) for i in range(n)]
    np.testing.assert_array_equal(got, want)


def test_edit_distance_padded_and_ragged_agree():
    pred = [[5, 6, 7], [5], []]
    tgt = [[5, 6, 7], [6, 5, 9], [4, 4]]
    padded_p = np.array([[5, 6, 7], [5, 0, 0], [0, 0, 0]])
    padded_t = np.array([[5, 6, 7], [6, 5, 9], [4, 4, 0]])
    np.testing.assert_array_equal(em.edit_distance(pred, tgt), [0, 2, 2])
    np.testing.assert_array_equal(em.edit_distance(padded_p, padded_t), [0, 2, 2])


# ----------------------------------------------------------------------------- decoded metrics
def test_exact_match_and_token_accuracy_hand_computed():
    tgt = [[30, 31, 32, 2], [30, 31, 32, 2], [30, 31, 32, 2], [30, 31, 32, 2], [30]]
    pred = [[30, 31, 32, 2],          # exact
            [30, 99, 32, 2],          # one substitution
            [30, 31],                 # too short: missing positions are wrong
            [30, 31, 32, 2, 40, 41],  # too long: extras ignored by token acc, not by EM
            []]                       # empty prediction
    np.testing.assert_array_equal(em.exact_match(pred, tgt), [1, 0, 0, 0, 0])
    np.testing.assert_allclose(em.token_accuracy(pred, tgt), [1, 0.75, 0.5, 1.0, 0.0])
    np.testing.assert_array_equal(em.edit_distance(pred, tgt), [0, 1, 2, 2, 1])


def test_eos_truncation_and_empty_target():
    tgt = np.array([[30, 31, 2, 0], [0, 0, 0, 0]])
    pred = np.array([[30, 31, 2, 55], [0, 0, 0, 0]])   # junk after EOS
    np.testing.assert_array_equal(em.exact_match(pred, tgt), [0, 1])
    np.testing.assert_array_equal(em.exact_match(pred, tgt, eos_id=2), [1, 1])
    np.testing.assert_allclose(em.token_accuracy(pred, tgt, eos_id=2), [1, 1])
    np.testing.assert_allclose(em.token_accuracy([[7]], [[]], pad_id=None), [0.0])


def test_teacher_forced_metrics_hand_computed():
    probs = np.zeros((2, 2, 3))
    probs[0, 0] = [0.7, 0.2, 0.1]
    probs[0, 1] = [0.1, 0.1, 0.8]
    probs[1, 0] = [1.0, 0.0, 0.0]
    probs[1, 1] = [0.3, 0.3, 0.4]              # padding position, must be ignored
    y = np.array([[0, 1], [0, 0]])            # target ids (row 1 has length 1)
    lens = np.array([2, 1])
    logp = np.log(np.take_along_axis(probs, y[..., None], 2)[..., 0])
    np.testing.assert_allclose(em.brier_score(probs, y, lens), [(0.14 + 1.46) / 2, 0.0])
    np.testing.assert_allclose(em.target_loglik(logp, lens), [np.log(0.7 * 0.1), 0.0])
    np.testing.assert_allclose(em.mean_token_prob(logp, lens), [0.4, 1.0])
    # perfect one-hot -> Brier 0; uniform over V -> 1 - 1/V
    v = 5
    assert em.brier_score(np.full((1, 1, v), 1 / v), [[0]])[0] == pytest.approx(1 - 1 / v)


def test_per_example_metrics_frame_and_aggregate():
    tgt = np.array([[30, 31, 2], [30, 31, 2]])
    pred = np.array([[30, 31, 2], [30, 40, 2]])
    logp = np.log(np.full((2, 4), 0.5))
    df = em.per_example_metrics(pred, tgt, logp=logp, probs=np.full((2, 3, 4), 0.25))
    assert list(df["exact_match"]) == [1, 0]
    np.testing.assert_allclose(df["target_loglik"], 3 * np.log(0.5))
    agg = em.aggregate(df, n=200, seed=1)
    assert set(agg["metric"]) >= {"exact_match", "token_accuracy", "edit_distance", "brier"}
    row = agg.set_index("metric").loc["exact_match"]
    assert row["mean"] == 0.5 and row["lo"] <= 0.5 <= row["hi"] and row["n"] == 2
    agg2 = em.aggregate({"x": [1.0, 2.0, np.nan]}, n=100)
    assert agg2.loc[0, "mean"] == 1.5 and agg2.loc[0, "n"] == 2


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 5000)
    m_s, lo_s, hi_s = em.bootstrap_ci(small, n=1000, seed=0)
    m_l, lo_l, hi_l = em.bootstrap_ci(large, n=4000, seed=0)
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5           # ~10x narrower expected
    # width close to the normal-theory 2 * 1.96 * sd / sqrt(n)
    theory = 2 * 1.96 * large.std() / np.sqrt(large.size)
    assert (hi_l - lo_l) == pytest.approx(theory, rel=0.06)
    assert em.bootstrap_ci(small, seed=3) == em.bootstrap_ci(small, seed=3)
    assert em.bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    assert all(np.isnan(em.bootstrap_ci([])))


# ----------------------------------------------------------------------------- smoothness
SIZES = np.logspace(6, 9, 10)


def _p_curve(center, slope=2.0):
    return 1.0 / (1.0 + np.exp(-slope * (np.log10(SIZES) - center)))


def test_breakthroughness_formula_and_sign():
    y = np.array([0.0, 0.1, 0.15, 0.5, 0.9])
    d2 = np.diff(y) ** 2
    assert em.breakthroughness(y) == pytest.approx(0.9 / np.sqrt(np.median(d2)))
    assert em.breakthroughness(y[::-1]) == pytest.approx(-0.9 / np.sqrt(np.median(d2)))
    # given scales, order is taken from them
    assert em.breakthroughness(y[::-1], scale=[5, 4, 3, 2, 1]) == em.breakthroughness(y)
    assert em.breakthroughness([0.2] * 4) == 0.0


@pytest.mark.parametrize("length", [5, 8, 10])
def test_exact_match_p_pow_L_is_far_more_breakthrough_than_token_accuracy(length):
    # Per-token accuracy rises smoothly (logistic in log size) from ~0.02 to ~0.88: the
    # sweep ends while p is still rising, the regime where emergence is typically reported.
    p = _p_curve(center=8.0)
    b_tok = em.breakthroughness(p)
    b_em = em.breakthroughness(p ** length)
    assert np.isfinite(b_em) and b_em > 5 * b_tok


def test_length_one_answers_give_one_curve_and_the_formula_value():
    """For one-token answers exact match *is* token accuracy, example by example, so the two scale
    curves coincide and so do their breakthroughness; with three-token answers they part."""
    rng = np.random.default_rng(5)
    curves = {1: ([], []), 3: ([], [])}
    for p in _p_curve(center=8.0):
        for length, (em_curve, tok_curve) in curves.items():
            target = rng.integers(21, 31, (2000, length))
            pred = np.where(rng.random(target.shape) < p, target, target + 40)  # a wrong token otherwise
            em_curve.append(em.exact_match(pred, target).mean())
            tok_curve.append(em.token_accuracy(pred, target).mean())
    em1, tok1 = map(np.asarray, curves[1])
    np.testing.assert_array_equal(em1, tok1)
    # eq. 1 written out: range over the root median squared increment (the curve rises: sign +)
    assert np.argmax(em1) > np.argmin(em1)
    want = (em1.max() - em1.min()) / np.sqrt(np.median(np.diff(em1) ** 2))
    assert em.breakthroughness(em1) == pytest.approx(want, rel=1e-12)
    assert em.breakthroughness(curves[1][1]) == em.breakthroughness(em1)
    em3, tok3 = map(np.asarray, curves[3])
    assert (em3 < tok3).all() and em.breakthroughness(em3) > em.breakthroughness(tok3)


def test_breakthroughness_gap_depends_on_sweep_placement():
    # Documented limitation: when the sweep runs p all the way to saturation (~0.98), p^5 is
    # itself a smooth shifted sigmoid and the median-increment normaliser no longer flags it.
    p = _p_curve(center=7.0)
    ratio = em.breakthroughness(p ** 5) / em.breakthroughness(p)
    assert 0.5 < ratio < 2.0


def test_linearity_linear_vs_step_direction():
    x = np.log10(SIZES)
    linear = 0.1 * (x - x[0])
    step = np.where(np.arange(10) >= 5, 1.0, 0.0)
    smooth = _p_curve(center=7.5)
    for method in ("r2", "increments"):
        l_lin = em.linearity(linear, SIZES, method)
        l_step = em.linearity(step, SIZES, method)
        l_smooth = em.linearity(smooth, SIZES, method)
        assert l_lin == pytest.approx(1.0)
        assert l_step < l_smooth < l_lin
    assert em.linearity(step, SIZES, "increments") == pytest.approx(1 / 9)
    assert em.linearity(step, SIZES, "r2") < 0.8
    zigzag = np.arange(10) % 2.0                       # constant |slope|, no net progress
    assert em.linearity(zigzag, SIZES, "increments") < 0.05
    assert em.linearity(zigzag, SIZES, "r2") < 0.2
    assert np.isnan(em.linearity([0.3] * 5))


# ----------------------------------------------------------------------------- p^L check
def _synthetic(rng, n, p_of_pos, max_len=8):
    lens = rng.integers(1, max_len + 1, n)
    mask = np.arange(max_len)[None, :] < lens[:, None]
    correct = (rng.random((n, max_len)) < p_of_pos[None, :max_len]) & mask
    return correct, mask


def test_pl_check_reproduces_exact_match_on_independent_tokens():
    rng = np.random.default_rng(0)
    n = 4000
    correct, mask = _synthetic(rng, n, np.full(8, 0.8))
    r = em.pl_check(correct, mask)
    se = np.sqrt(r["observed"] * (1 - r["observed"]) / n)
    assert abs(r["predicted_pooled"] - r["observed"]) < 4 * se
    assert abs(r["predicted_positional"] - r["observed"]) < 4 * se
    # position-dependent accuracy: per-position prediction still within sampling error
    correct, mask = _synthetic(rng, n, np.linspace(0.99, 0.6, 8))
    r = em.pl_check(correct, mask)
    se = np.sqrt(r["observed"] * (1 - r["observed"]) / n)
    assert abs(r["predicted_positional"] - r["observed"]) < 4 * se


def test_pl_check_detects_correlated_errors():
    # all-or-nothing answers: token accuracy 0.5 but exact match 0.5, far above 0.5 ** L
    rng = np.random.default_rng(1)
    n, length = 2000, 6
    ok = rng.random(n) < 0.5
    correct = np.repeat(ok[:, None], length, axis=1)
    mask = np.ones_like(correct)
    r = em.pl_check(correct, mask)
    assert r["observed"] > 0.4 and r["predicted_pooled"] < 0.05


def test_pl_curves_over_sweep():
    rng = np.random.default_rng(2)
    recs = []
    for size, p in zip(SIZES[::3], _p_curve(8.0)[::3]):
        c, m = _synthetic(rng, 1500, np.full(8, p))
        recs.append({"arch": "decoder", "params": size, "correct": c, "mask": m})
    curves = em.pl_curves(recs)
    assert list(curves.columns[:2]) == ["arch", "params"]
    assert np.all(np.diff(curves["observed"]) >= 0)
    assert np.allclose(curves["observed"], curves["predicted_pooled"], atol=0.05)


# ----------------------------------------------------------------------------- tables, plots
def _long_df():
    rows = []
    for arch, shift in (("decoder", 0.0), ("encdec", 0.3)):
        p = _p_curve(8.0 - shift)
        for size, pi in zip(SIZES, p):
            for step in (100, 200):
                for metric, val in (("token_accuracy", pi), ("exact_match", pi ** 5)):
                    v = val * (step / 200)
                    rows.append(dict(arch=arch, params=size, step=step, metric=metric,
                                     mean=v, lo=v - 0.01, hi=v + 0.01))
    return pd.DataFrame(rows)


def test_smoothness_table_and_markdown():
    df = _long_df()
    sm = em.smoothness_table(df)
    assert len(sm) == 4 and (sm["n_scales"] == 10).all()
    s = sm.set_index(["arch", "metric"])
    assert s.loc[("decoder", "exact_match"), "breakthroughness"] > \
        5 * s.loc[("decoder", "token_accuracy"), "breakthroughness"]
    md = ep.smoothness_markdown(df)
    assert md.splitlines()[0].startswith("| metric | decoder B")
    mt = ep.metric_table(df)
    assert "[" in mt and "encdec" in mt and len(mt.splitlines()) == 4


def test_plots_draw_the_data_and_save_it(tmp_path):
    df = _long_df()
    fig = ep.plot_scaling_panels(df, out=tmp_path / "scaling.png")
    panels = visible_axes(fig)
    assert [ax.get_title() for ax in panels] == ["token_accuracy", "exact_match"]
    last = df[df["step"] == 200]
    for ax, metric in zip(panels, ("token_accuracy", "exact_match")):
        assert ax.get_xscale() == "log"
        lines = data_lines(ax)
        assert [line.get_label() for line in lines] == ["decoder", "encdec"]  # one line per arch
        for line in lines:
            want = last[(last["arch"] == line.get_label()) & (last["metric"] == metric)].sort_values("params")
            np.testing.assert_allclose(line.get_xdata(), want["params"])
            np.testing.assert_allclose(line.get_ydata(), want["mean"])  # the last step, not the first
    assert_saved(fig, tmp_path / "scaling.png", dpi=130)

    rng = np.random.default_rng(3)
    recs = [{"arch": a, "params": s, **dict(zip(("correct", "mask"),
                                                _synthetic(rng, 200, np.full(8, p))))}
            for a in ("decoder", "encoder") for s, p in zip(SIZES[::3], _p_curve(8.0)[::3])]
    curves = em.pl_curves(recs)
    fig = ep.plot_pl_check(curves, out=tmp_path / "pl.png")
    panels = visible_axes(fig)
    assert [ax.get_yscale() for ax in panels] == ["linear", "log"]
    for ax in panels:  # observed, pooled p^L and per-position prediction for each of the two archs
        assert len(data_lines(ax)) == 6
    observed = {line.get_label(): line.get_ydata() for line in data_lines(panels[0])}
    for arch in ("decoder", "encoder"):
        np.testing.assert_allclose(observed[f"{arch}: observed"],
                                   curves[curves["arch"] == arch].sort_values("params")["observed"])
    assert_saved(fig, tmp_path / "pl.png", dpi=130)

    steps = np.array([10, 100, 1000, 10000])
    grok = pd.DataFrame([dict(arch=a, step=s, weight_decay=wd, train_acc=1.0,
                              val_acc=float(wd and s >= 1000))
                         for a in ("decoder", "encdec") for wd in (True, False) for s in steps])
    fig = ep.plot_grokking(grok, out=tmp_path / "grok.png")
    panels = visible_axes(fig)
    assert [ax.get_title() for ax in panels] == ["decoder", "encdec"]
    for ax in panels:
        lines = {line.get_label(): line for line in data_lines(ax)}
        assert set(lines) == {"train, wd on", "val, wd on", "train, wd off", "val, wd off"}
        np.testing.assert_array_equal(lines["val, wd on"].get_ydata(), [0, 0, 1, 1])
        np.testing.assert_array_equal(lines["val, wd off"].get_ydata(), [0, 0, 0, 0])
        assert lines["val, wd off"].get_linestyle() == "--" and lines["val, wd on"].get_linestyle() == "-"
    assert_saved(fig, tmp_path / "grok.png", dpi=130)


def test_smoothness_table_averages_seeds_at_each_scale():
    from archcmp.analysis.emergence.metrics import breakthroughness, smoothness_table

    params = [10, 100, 1000, 10000]
    means = np.array([0.0, 0.05, 0.1, 0.9])
    rows = [{"arch": "decoder", "metric": "exact_match", "params": p, "seed": s, "mean": m + d}
            for p, m in zip(params, means) for s, d in ((0, -0.01), (1, 0.01))]
    t = smoothness_table(pd.DataFrame(rows))
    assert t["n_scales"].iloc[0] == 4
    assert t["breakthroughness"].iloc[0] == pytest.approx(breakthroughness(means, np.array(params)))
