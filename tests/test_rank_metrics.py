"""Tests for archcmp.analysis.rank.metrics (attention rank / conditioning metrics)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from figures import assert_saved, data_lines, visible_axes

from archcmp.analysis.rank import metrics as rank
from archcmp.analysis.rank.metrics import (
    attention_block_metrics, causal_softmax, condition_number, effective_rank, logdet_exact_triangular,
    logdet_generic, matrix_metrics, numerical_rank, rank_collapse_by_segment, rank_collapse_residual,
    stable_rank, tol_f32, tol_f64,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("n", [1, 5, 17])
def test_identity_ranks(n):
    eye = np.eye(n, dtype=np.float32)
    assert effective_rank(eye) == pytest.approx(n, rel=1e-12)
    assert stable_rank(eye) == pytest.approx(n, rel=1e-12)
    assert numerical_rank(eye) == n
    assert condition_number(eye) == pytest.approx(1.0)


def test_rank_one_effective_rank_is_one():
    r = _rng(1)
    A = np.outer(r.standard_normal(20), r.standard_normal(13))
    assert effective_rank(A) == pytest.approx(1.0, abs=1e-9)
    assert stable_rank(A) == pytest.approx(1.0, abs=1e-9)
    assert numerical_rank(A) == 1


def test_effective_rank_equal_singular_values_and_zero_matrix():
    A = np.diag([3.0, 3.0, 3.0, 0.0, 0.0])          # exact zero singular values must be handled
    assert effective_rank(A) == pytest.approx(3.0, rel=1e-12)
    assert np.isnan(effective_rank(np.zeros((4, 4))))
    assert numerical_rank(np.zeros((4, 4))) == 0
    assert condition_number(A) == np.inf


@pytest.mark.parametrize("k", [1, 3, 8])
def test_numerical_rank_of_constructed_rank_k(k):
    r = _rng(k)
    A = r.standard_normal((4, 30, k)) @ r.standard_normal((4, k, 24))     # batched, rank k each
    np.testing.assert_array_equal(numerical_rank(A, tol_f64(30, 24)), k)
    np.testing.assert_array_equal(numerical_rank(A.astype(np.float32), tol_f32(30, 24)), k)
    # the float32 copy is full rank at the float64 tolerance: rounding lifts the zero singular values
    assert np.all(numerical_rank(A.astype(np.float32), tol_f64(30, 24)) > k)


def test_tolerances():
    assert tol_f32(128) == pytest.approx(128 * np.finfo(np.float32).eps)
    assert tol_f64(10, 40) == pytest.approx(40 * np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------- vs direct numpy
def _direct(A):
    A = A.astype(np.float64)
    s = np.linalg.svd(A, compute_uv=False)
    p = s / s.sum()
    return {
        "numerical_rank_f64": np.linalg.matrix_rank(A),   # numpy default: s.max * max(n, m) * eps
        "numerical_rank_f32": int(np.sum(s > s[0] * max(A.shape) * np.finfo(np.float32).eps)),
        "effective_rank": np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))),
        "stable_rank": np.linalg.norm(A, "fro") ** 2 / np.linalg.norm(A, 2) ** 2,
        "log10_cond": np.log10(np.linalg.cond(A)),
    }


@pytest.mark.parametrize("shape", [(7, 7), (12, 5), (5, 12)])
def test_metrics_match_direct_numpy(shape):
    r = _rng(3)
    A = r.standard_normal((6,) + shape).astype(np.float32)
    A[0, :, 0] = A[0, :, 1]                                           # one rank-deficient matrix
    got = matrix_metrics(A)
    for i in range(len(A)):
        want = _direct(A[i])
        for key, val in want.items():
            assert got[key][i] == pytest.approx(val, rel=1e-9), (key, i)
    assert effective_rank(A) == pytest.approx(got["effective_rank"])
    assert stable_rank(A) == pytest.approx(got["stable_rank"])
    if shape[0] == shape[1]:
        sign, logabs = np.linalg.slogdet(A.astype(np.float64))
        np.testing.assert_allclose(got["logdet_generic"][1:], logabs[1:], rtol=1e-12)
        np.testing.assert_array_equal(got["slogdet_sign"][1:], sign[1:])
        assert np.all(np.isnan(got["logdet_exact"]))                    # dense, not triangular
    else:
        assert np.all(np.isnan(got["logdet_generic"])) and np.all(np.isnan(got["logdet_exact"]))


def test_logdet_exact_triangular_matches_det():
    r = _rng(4)
    T = np.tril(r.uniform(0.5, 2.0, (3, 6, 6))) * np.sign(r.standard_normal((3, 1, 6)))
    sign, logabs = logdet_exact_triangular(T, return_sign=True)
    det = np.linalg.det(T)
    np.testing.assert_allclose(logabs, np.log(np.abs(det)), rtol=1e-12)
    np.testing.assert_array_equal(sign, np.sign(det))
    assert logdet_exact_triangular(np.diag([1.0, 0.0, 2.0])) == -np.inf


# ----------------------------------------------------------------------------- causal softmax
def test_causal_softmax_logdet_exact_is_sum_log_diag_and_agrees_when_well_conditioned():
    r = _rng(5)
    S = 0.3 * r.standard_normal((2, 6, 6))                     # mild scores -> well conditioned
    P = causal_softmax(S)
    assert np.all(np.triu(P, 1) == 0) and np.allclose(P.sum(-1), 1)
    exact = logdet_exact_triangular(P)
    np.testing.assert_allclose(exact, np.log(np.diagonal(P, axis1=-2, axis2=-1)).sum(-1), rtol=1e-14)
    # analytic log-softmax diagonal: S_ii - logsumexp_{j<=i} S_ij
    lse = np.array([[np.log(np.exp(S[b, i, :i + 1]).sum()) for i in range(6)] for b in range(2)])
    np.testing.assert_allclose(exact, (np.diagonal(S, axis1=-2, axis2=-1) - lse).sum(-1), rtol=1e-12)
    sign, generic = logdet_generic(P)
    np.testing.assert_array_equal(sign, 1.0)
    np.testing.assert_allclose(generic, exact, rtol=1e-10)
    m = matrix_metrics(P.astype(np.float32))
    assert m["is_triangular"].all() and np.all(np.abs(m["logdet_diff"]) < 1e-6)


def test_ill_conditioned_causal_softmax_disagreement_is_reported():
    demo = rank.causal_softmax_demo(n=128, d=16, seed=0, construction="unscaled")
    assert demo["logdet_exact"] == pytest.approx(demo["logdet_analytic"], rel=1e-10)
    assert np.isfinite(demo["logdet_exact"]) and np.isfinite(demo["logdet_generic"])
    assert demo["slogdet_sign"] in (-1.0, 1.0)
    assert abs(demo["logdet_generic"] - demo["logdet_exact"]) > 1.0        # they differ...
    assert demo["logdet_diff"] == pytest.approx(demo["logdet_generic"] - demo["logdet_exact"])  # ...visibly
    assert demo["log10_cond"] > 15                                           # beyond float64 resolution
    assert demo["numerical_rank_f64"] < 128 and demo["numerical_rank_f32"] < 128
    # the same matrix through the block pipeline: both columns present, nothing raised or hidden
    r = np.random.default_rng(0)
    Q, K = r.standard_normal((128, 16)), r.standard_normal((128, 16))
    P = causal_softmax(Q @ K.T)[None, None, None]
    df = attention_block_metrics(P, np.ones((1, 128), int))
    row = df.iloc[0]
    assert bool(row["is_triangular"])
    assert row["logdet_exact"] == pytest.approx(demo["logdet_exact"], rel=1e-12)
    assert np.isfinite(row["logdet_generic"]) and abs(row["logdet_generic"] - row["logdet_exact"]) > 1.0


def test_demo_table_columns():
    t = rank.causal_softmax_demo_table(seeds=[0], constructions=("scaled",), dtypes=("float32",), n=16,
                                       d=4, causal=(True, False))
    assert len(t) == 2 and t["logdet_exact"].notna().tolist() == [True, False]


# ----------------------------------------------------------------------------- block extraction
def _packed_probs(L=2, H=3, causal=True):
    """Two packed rows: [seg1 x5, seg2 x7, pad x4] and [seg1 x10, pad x6]; block-diagonal softmax."""
    seg = np.array([[1] * 5 + [2] * 7 + [0] * 4, [1] * 10 + [0] * 6])
    B, T = seg.shape
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
    if causal:
        allowed &= np.tril(np.ones((T, T), bool))
    s = _rng(6).standard_normal((L, B, H, T, T))
    s = np.where(allowed[None, :, None], s, -np.inf)
    with np.errstate(invalid="ignore"):
        p = np.exp(s - s.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
    return np.nan_to_num(p).astype(np.float32), seg        # padding rows -> all zeros


def test_block_extraction_packed_batch():
    L, H = 2, 3
    probs, seg = _packed_probs(L, H)
    blocks = {(b, s): blk for b, s, blk in rank.extract_blocks(probs, seg)}
    assert {k: v.shape for k, v in blocks.items()} == {(0, 1): (L, H, 5, 5), (0, 2): (L, H, 7, 7),
                                                       (1, 1): (L, H, 10, 10)}
    np.testing.assert_array_equal(blocks[(0, 2)], probs[:, 0, :, 5:12, 5:12])
    df = attention_block_metrics(probs, seg, keep_spectra=True)
    assert list(df.columns[:len(rank.METRIC_COLUMNS)]) == rank.METRIC_COLUMNS
    assert len(df) == L * H * 3
    sizes = df.groupby(["batch", "segment"])["n"].agg(["min", "max", "size"])
    assert sizes.to_dict("index") == {(0, 1): {"min": 5, "max": 5, "size": 6}, (0, 2): {"min": 7, "max": 7, "size": 6},
                                      (1, 1): {"min": 10, "max": 10, "size": 6}}
    assert df["is_triangular"].all() and (df["row_sum_err"] < 1e-5).all()
    assert df["logdet_exact"].notna().all() and (df["full_rank_f32"]).all()
    row = df[(df["layer"] == 1) & (df["head"] == 2) & (df["batch"] == 0) & (df["segment"] == 2)].iloc[0]
    want = _direct(probs[1, 0, 2, 5:12, 5:12])
    assert row["effective_rank"] == pytest.approx(want["effective_rank"], rel=1e-9)
    assert row["stable_rank"] == pytest.approx(want["stable_rank"], rel=1e-9)
    assert row["logdet_exact"] == pytest.approx(np.log(np.diag(probs[1, 0, 2, 5:12, 5:12]).astype(float)).sum())
    assert len(row["sv"]) == 7


def test_block_metrics_bidirectional_and_cross():
    probs, seg = _packed_probs(causal=False)
    df = attention_block_metrics(probs, seg)
    assert not df["is_triangular"].any() and df["logdet_exact"].isna().all()
    assert df["logdet_generic"].notna().all()
    # cross attention: 6 decoder queries, 9 encoder keys, separate ids
    seg_q, seg_k = np.array([[1, 1, 2, 2, 2, 0]]), np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2]])
    s = _rng(7).standard_normal((1, 1, 2, 6, 9))
    s = np.where((seg_q[:, :, None] == seg_k[:, None, :])[None, :, None], s, -np.inf)
    with np.errstate(invalid="ignore"):                        # the padding query row is all -inf
        p = np.exp(s - s.max(-1, keepdims=True))
        p = np.nan_to_num(p / p.sum(-1, keepdims=True))
    df = attention_block_metrics(p, seg_q, seg_k)
    assert sorted(zip(df["n"], df["n_k"])) == [(2, 4), (2, 4), (3, 5), (3, 5)]
    assert df[["logdet_exact", "logdet_generic", "slogdet_sign"]].isna().all().all()
    # each block: n < n_k rows of a softmax over random scores, full row rank (<= would always hold)
    assert not df["is_triangular"].any() and (df["numerical_rank_f32"] == df["n"]).all()


def test_time_metrics_reports_rate():
    t = rank.time_metrics(n=8, n_matrices=16, heads=4)
    assert t["n"] == 8 and t["matrices"] == 16 and t["seconds"] > 0
    assert t["matrices_per_second"] == pytest.approx(16 / t["seconds"], rel=1e-12)  # a rate, not a count


# ----------------------------------------------------------------------------- rank collapse
@pytest.mark.parametrize("norm", ["fro", "l1inf"])
def test_rank_collapse_zero_for_constant_rows_positive_otherwise(norm):
    x = _rng(8).standard_normal(6)
    X = np.tile(x, (9, 1))                                    # 1 x^T: rank 1, all rows equal
    r = rank_collapse_residual(X, norm=norm)
    assert r.residual == pytest.approx(0.0, abs=1e-12) and r.relative == pytest.approx(0.0, abs=1e-12)
    Y = X + 0.1 * _rng(9).standard_normal(X.shape)
    assert rank_collapse_residual(Y, norm=norm).relative > 0
    # a rank-1 matrix whose rows are *not* equal (u x^T, u non-constant) is not collapsed
    assert rank_collapse_residual(np.outer(np.arange(1.0, 10.0), x), norm=norm).relative > 0


def test_rank_collapse_fro_uses_mean_and_l1inf_direct():
    X = _rng(10).standard_normal((3, 11, 4))
    r = rank_collapse_residual(X, norm="fro")
    R = X - X.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(r.residual, np.linalg.norm(R, axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(r.relative, np.linalg.norm(R, axis=(1, 2)) / np.linalg.norm(X, axis=(1, 2)))
    # the mean is the Frobenius minimiser: the median cannot do better
    assert np.all(rank_collapse_residual(X, "fro", center="median").residual >= r.residual - 1e-12)
    r1 = rank_collapse_residual(X, norm="l1inf")
    Rm = X - np.median(X, axis=1, keepdims=True)
    want = np.sqrt(np.linalg.norm(Rm, 1, axis=(1, 2)) * np.linalg.norm(Rm, np.inf, axis=(1, 2)))
    np.testing.assert_allclose(r1.residual, want, rtol=1e-12)


def test_rank_collapse_mask_and_segments():
    X = _rng(11).standard_normal((2, 3, 12, 5))               # [L, B, T, D]
    seg = np.array([[1] * 4 + [2] * 6 + [0] * 2, [1] * 12, [1] * 3 + [0] * 9])
    X[:, 0, 10:] = 1e6                                          # padding garbage must be ignored
    m = rank_collapse_residual(X[:, 0], "fro", mask=seg[0] == 2)
    np.testing.assert_allclose(m.relative, rank_collapse_residual(X[:, 0, 4:10], "fro").relative)
    df = rank_collapse_by_segment(X, seg, norm="l1inf")
    assert len(df) == 2 * 4
    assert sorted(set(zip(df.batch, df.segment, df.n))) == [(0, 1, 4), (0, 2, 6), (1, 1, 12), (2, 1, 3)]
    assert (df["relative"] > 0).all() and (df["relative"] < 1e3).all()


# ----------------------------------------------------------------------------- reporting
def test_markdown_table_and_plots(tmp_path):
    probs, seg = _packed_probs()
    a = attention_block_metrics(probs, seg, keep_spectra=True).assign(arch="decoder", step=0)
    b = attention_block_metrics(_packed_probs(causal=False)[0], seg, keep_spectra=True).assign(arch="encoder", step=0)
    df = pd.concat([a, b, a.assign(step=10)], ignore_index=True)
    md = rank.markdown_table(df)
    lines = md.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| decoder | 36 |") and "±" in lines[2]
    assert "full_f32" in lines[0] and lines[3].startswith("| encoder | 18 |")
    fig = rank.plot_rank_heatmaps(df, path=tmp_path / "h.png")
    panels = visible_axes(fig)
    assert [ax.get_title() for ax in panels] == ["decoder", "encoder"]
    for ax, arch in zip(panels, ("decoder", "encoder")):  # layer x head means of effective rank
        want = df[df["arch"] == arch].groupby(["layer", "head"])["effective_rank"].mean().unstack("head")
        np.testing.assert_allclose(ax.images[0].get_array(), want.to_numpy())
    assert_saved(fig, tmp_path / "h.png", dpi=120)

    fig = rank.plot_singular_spectra(df, per_arch=2, path=tmp_path / "s.png")
    spectra = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 2]  # not the axhline tolerances
    assert len(spectra) == 2 * 2 and all(line.get_ydata()[0] == 1.0 for line in spectra)  # normalised by sigma_max
    assert [line.get_label() for line in data_lines(fig.axes[0])] == ["decoder", "encoder"]
    assert {len(line.get_xdata()) for line in spectra} <= {5, 7, 10}  # one singular value per block row
    assert_saved(fig, tmp_path / "s.png", dpi=120)

    fig = rank.plot_metric_vs_step(df, "stable_rank", path=tmp_path / "t.png")
    lines = {line.get_label(): line for line in data_lines(fig.axes[0])}
    np.testing.assert_array_equal(lines["decoder"].get_xdata(), [0, 10])
    np.testing.assert_allclose(lines["decoder"].get_ydata(), df[df["arch"] == "decoder"].groupby("step")["stable_rank"].mean())
    np.testing.assert_array_equal(lines["encoder"].get_xdata(), [0])
    assert_saved(fig, tmp_path / "t.png", dpi=120)

    res = rank_collapse_by_segment(_rng(0).standard_normal((3, 2, 16, 4)), seg).assign(arch="decoder")
    fig = rank.plot_residual_vs_depth(res, path=tmp_path / "r.png")
    (line,) = data_lines(fig.axes[0])
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2])  # one point per layer
    np.testing.assert_allclose(line.get_ydata(), res.groupby("layer")["relative"].mean())
    assert fig.axes[0].get_yscale() == "log"
    assert_saved(fig, tmp_path / "r.png", dpi=120)
