"""Induction-head scores on constructed attention patterns and OV circuits, and the phase-change
window of a constructed loss curve."""
import numpy as np
import pandas as pd

from archcmp.analysis.induction.cli import (copying_scores, criterion, drop_window, phase_change,
                                        prefix_matching_scores, previous_token_scores)


def _repeat_sequence(L=6):
    """BOS, L distinct tokens, SEP, the same L tokens: [1, 10..10+L-1, 4, 10..10+L-1]."""
    seg = np.arange(10, 10 + L)
    return np.concatenate([[1], seg, [4], seg])[None]


def _causal_uniform(T):
    a = np.tril(np.ones((T, T)))
    return a / a.sum(-1, keepdims=True)


def test_perfect_induction_head_scores_one_and_uniform_head_scores_little():
    tokens = _repeat_sequence(6)
    T = tokens.shape[1]
    valid = np.ones_like(tokens, bool)
    perfect = _causal_uniform(T).copy()
    L = 6
    for i in range(L):  # repeat token x_i at position L+2+i attends to x_{i+1}'s position 2+i
        q = L + 2 + i
        perfect[q] = 0
        perfect[q, 2 + i] = 1.0
    uniform = _causal_uniform(T)
    attn = np.stack([perfect, uniform])[None]  # [B=1, H=2, T, T]
    pm = prefix_matching_scores(attn, tokens, valid)
    assert pm[0] == 1.0
    # uniform: one target among q+1 visible keys, for queries q = 8..13 -> mean of 1/(q+1)
    np.testing.assert_allclose(pm[1], np.mean([1 / (q + 1) for q in range(8, 14)]))
    assert pm[1] < 0.15


def test_previous_token_head():
    T = 7
    shift = np.eye(T, k=-1)
    shift[0, 0] = 1
    attn = np.stack([shift, _causal_uniform(T)])[None]
    pt = previous_token_scores(attn, np.ones((1, T), bool))
    assert pt[0] == 1.0 and pt[1] < 0.5


def test_copying_score_identity_one_random_near_zero():
    rng = np.random.default_rng(0)
    ov = np.stack([3 * np.eye(20), -np.eye(20), rng.normal(size=(20, 20))])
    c = copying_scores(ov)
    assert c[0] == 1.0 and c[1] == 0.0 and abs(c[2] - 0.5) < 0.25  # random: eigenvalues symmetric about 0
    # a random matrix's positive share sits near one half; the score's informative end is 1
    assert c[2] < 0.8


def test_drop_window_and_criterion_on_constructed_curves():
    steps = np.arange(0, 2001, 50)
    sharp = 3.2 - 3.1 / (1 + np.exp(-(steps - 1000) / 30))  # drop centred at step 1000
    w = drop_window(steps, sharp)
    assert 900 <= w["t10"] <= 1000 <= w["t90"] <= 1100 and w["window"] <= 200
    per_step = pd.DataFrame({"run": "r", "arch": "decoder", "seed": 0, "n_symbols": 26, "step": steps,
                             "repeat_loss": sharp, "first_loss": 3.26})
    pm = 0.9 / (1 + np.exp(-(steps - 1000) / 30))
    heads = pd.DataFrame({"run": "r", "step": steps, "layer": 2, "head": 0, "prefix_matching": pm})
    phase = phase_change(per_step, heads, 0.5)
    assert phase["pm_step"].iloc[0] in (1000.0, 1050.0)
    assert criterion(phase)["met"]
    # a slow, smooth decline is no phase change
    slow = 3.2 - 3.1 * steps / 2000
    phase_slow = phase_change(per_step.assign(repeat_loss=slow), heads, 0.5)
    assert not criterion(phase_slow)["met"]
