"""Rank and conditioning metrics for attention matrices (the "attention rank" probe).

Question under test: a bidirectional softmax attention matrix ``P = softmax(Q K^T)`` (n x n,
built from an n x d by d x n product with n >> d) is argued to be low-rank, whereas a causal
one is lower-triangular with a strictly positive diagonal, hence ``det P = prod_i P_ii > 0``
and "always full rank".  That statement is true in exact arithmetic, but the diagonal entries
can be tiny, so the matrix can be *numerically* rank deficient and extremely ill-conditioned.
This module therefore reports several notions of rank side by side, and both an exact
(triangular) and a generic (LU) log-determinant, without reconciling them.

Conventions
-----------
* Inputs may be float32 (as captured from a model); every computation is done in float64.
  Matrices are batched over leading axes: ``[..., n, m]``.
* Numerical rank uses a *relative* tolerance: singular values ``s_i > rtol * s_max`` count.
  ``tol_f32(n, m) = max(n, m) * eps_f32`` (~1.19e-7 per unit of size) is the honest tolerance
  for matrices stored in float32 (rounding to float32 alone perturbs every singular value by up
  to ~eps_f32 * s_max); ``tol_f64(n, m) = max(n, m) * eps_f64`` (~2.2e-16 per unit) measures the
  rank of the stored matrix itself, as ``numpy.linalg.matrix_rank`` does by default.
* Figures, the markdown summary and the causal-softmax determinant demo live in
  :mod:`archcmp.analysis.rank.plots` and are re-exported here (``rank.causal_softmax_demo``).
* Condition numbers above ~1/eps_f64 (log10 > ~15.6) are not resolved by a float64 SVD: the
  computed smallest singular value is then rounding noise, so read them as "at least 1e16".

References
----------
* O. Roy, M. Vetterli, "The effective rank: a measure of effective dimensionality",
  EUSIPCO 2007 (effective rank).
* M. Rudelson, R. Vershynin, "Sampling from large matrices: an approach through geometric
  functional analysis", J. ACM 2007 (stable / numerical rank ``||A||_F^2 / ||A||_2^2``).
* Y. Dong, J.-B. Cordonnier, A. Loukas, "Attention is not all you need: pure attention loses
  rank doubly exponentially with depth", ICML 2021 (rank-collapse residual).
"""
from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import pandas as pd

EPS_F32 = float(np.finfo(np.float32).eps)
EPS_F64 = float(np.finfo(np.float64).eps)

METRIC_COLUMNS = [
    "layer", "head", "batch", "segment", "n", "n_k",
    "numerical_rank_f32", "numerical_rank_f64", "effective_rank", "stable_rank",
    "logdet_exact", "logdet_generic", "slogdet_sign", "log10_cond", "is_triangular",
    "logdet_diff", "full_rank_f32", "full_rank_f64", "sigma_max", "sigma_min", "row_sum_err",
]


# ----------------------------------------------------------------------------- basic metrics
def _f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64, copy=False)


def singular_values(A) -> np.ndarray:
    """Singular values of ``A [..., n, m]`` in float64, descending, shape ``[..., min(n, m)]``."""
    return np.linalg.svd(_f64(A), compute_uv=False)


def tol_f32(n: int, m: int | None = None) -> float:
    """Relative rank tolerance at float32 scale: ``max(n, m) * eps_f32``."""
    return max(n, n if m is None else m) * EPS_F32


def tol_f64(n: int, m: int | None = None) -> float:
    """Relative rank tolerance at float64 scale: ``max(n, m) * eps_f64`` (numpy's default)."""
    return max(n, n if m is None else m) * EPS_F64


def _rank_from_sv(sv: np.ndarray, rtol: float) -> np.ndarray:
    smax = sv[..., :1]
    return np.sum((sv > rtol * smax) & (smax > 0), axis=-1)


def numerical_rank(A, rtol: float | None = None) -> np.ndarray:
    """Number of singular values strictly greater than ``rtol * sigma_max``.

    ``rtol`` defaults to :func:`tol_f64` of the matrix size.  A zero matrix has rank 0.
    """
    A = _f64(A)
    rtol = tol_f64(*A.shape[-2:]) if rtol is None else rtol
    return _rank_from_sv(singular_values(A), rtol)


def _erank_from_sv(sv: np.ndarray) -> np.ndarray:
    total = sv.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = sv / total
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    out = np.exp(-plogp.sum(axis=-1))
    return np.where(total[..., 0] > 0, out, np.nan)


def effective_rank(A) -> np.ndarray:
    """Effective rank of Roy & Vetterli (2007): ``exp(H(p))`` with ``p_i = s_i / sum_j s_j``.

    ``H`` is the Shannon entropy in nats with ``0 log 0 = 0``; it lies in ``[1, min(n, m)]``,
    equals ``k`` for a matrix with ``k`` equal non-zero singular values, and is NaN for the zero
    matrix (the paper defines it for non-zero matrices only).
    """
    return _erank_from_sv(singular_values(A))


_UNIFORM_CAUSAL: dict[int, float] = {}


def uniform_causal_erank(n: int) -> float:
    """Effective rank of the n x n uniform causal attention matrix (row i = 1/i on its first i
    entries): the reference that makes effective ranks of different n comparable."""
    if n not in _UNIFORM_CAUSAL:
        A = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
        _UNIFORM_CAUSAL[n] = float(effective_rank(A))
    return _UNIFORM_CAUSAL[n]


def _srank_from_sv(sv: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(sv**2, axis=-1) / sv[..., 0] ** 2


def stable_rank(A) -> np.ndarray:
    """Stable rank ``||A||_F^2 / ||A||_2^2`` (Rudelson & Vershynin 2007); NaN for a zero matrix."""
    return _srank_from_sv(singular_values(A))


def _cond_from_sv(sv: np.ndarray) -> np.ndarray:
    smax, smin = sv[..., 0], sv[..., -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(smin > 0, smax / np.where(smin > 0, smin, 1.0), np.inf)


def condition_number(A) -> np.ndarray:
    """2-norm condition number ``s_max / s_min`` (``s_min`` = the min(n, m)-th singular value).

    ``inf`` when the computed ``s_min`` is exactly zero (including the zero matrix).  Values
    beyond ~1e16 are limited by float64 rounding (see module docstring).  The ``log10_cond``
    metric column is ``np.log10`` of this.
    """
    return _cond_from_sv(singular_values(A))


def is_lower_triangular(A, rtol: float = EPS_F32) -> np.ndarray:
    """True where every strictly-upper entry satisfies ``|a_ij| <= rtol * max|A|``.

    Causal attention captured from a model has exact zeros above the diagonal (the masked
    logits underflow in ``exp``); the float32-scale default also accepts rounding-level leaks.
    """
    A = _f64(A)
    if A.shape[-1] != A.shape[-2]:
        return np.zeros(A.shape[:-2], dtype=bool)
    upper = np.abs(np.triu(A, 1)).max(axis=(-2, -1))
    return upper <= rtol * np.abs(A).max(axis=(-2, -1))


def logdet_exact_triangular(A, return_sign: bool = False):
    """Log|det| of a lower-triangular matrix as ``sum_i log|a_ii|`` (no factorisation).

    For a triangular matrix this is the determinant of the matrix *as stored*, accurate to a
    few ulps of each ``log a_ii`` however ill-conditioned the matrix is.  Any entries above the
    diagonal are ignored: check :func:`is_lower_triangular` first.  A zero diagonal entry gives
    ``-inf``.  With ``return_sign`` returns ``(sign, logabsdet)`` like ``numpy.linalg.slogdet``.
    """
    d = np.diagonal(_f64(A), axis1=-2, axis2=-1)
    with np.errstate(divide="ignore"):
        logabs = np.log(np.abs(d)).sum(axis=-1)
    if return_sign:
        return np.prod(np.sign(d), axis=-1), logabs
    return logabs


def logdet_generic(A):
    """``numpy.linalg.slogdet`` in float64 (LU with partial pivoting): ``(sign, logabsdet)``.

    Backward stable, but for an ill-conditioned matrix the determinant is not forward accurate:
    both the sign and ``logabsdet`` can be wrong.  Report it next to the exact value.
    """
    return np.linalg.slogdet(_f64(A))


def metrics_from_singular_values(sv: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """All SVD-based metrics from singular values ``sv [..., k]`` of matrices of ``shape``."""
    n, m = shape
    return {"numerical_rank_f32": _rank_from_sv(sv, tol_f32(n, m)),
            "numerical_rank_f64": _rank_from_sv(sv, tol_f64(n, m)),
            "effective_rank": _erank_from_sv(sv), "stable_rank": _srank_from_sv(sv),
            "log10_cond": np.log10(_cond_from_sv(sv)), "sigma_max": sv[..., 0], "sigma_min": sv[..., -1]}


def matrix_metrics(A, determinant: bool = True, tri_rtol: float = EPS_F32) -> dict[str, np.ndarray]:
    """Every metric for a stack ``A [..., n, m]`` from one batched SVD (plus LU if square).

    Determinant metrics (``logdet_exact``, ``logdet_generic``, ``slogdet_sign``) are NaN when
    ``determinant`` is False or the matrices are rectangular; ``logdet_exact`` is NaN for
    matrices that are not lower-triangular within ``tri_rtol``.
    """
    A = _f64(A)
    n, m = A.shape[-2:]
    sv = singular_values(A)
    out = metrics_from_singular_values(sv, (n, m))
    nan = np.full(A.shape[:-2], np.nan)
    square = determinant and n == m
    out["is_triangular"] = is_lower_triangular(A, tri_rtol) if square else np.zeros(A.shape[:-2], bool)
    if square:
        sign, logabs = logdet_generic(A)
        exact = np.where(out["is_triangular"], logdet_exact_triangular(A), np.nan)
        out.update(logdet_exact=exact, logdet_generic=logabs, slogdet_sign=sign,
                   logdet_diff=logabs - exact)
    else:
        out.update(logdet_exact=nan, logdet_generic=nan, slogdet_sign=nan, logdet_diff=nan)
    out["full_rank_f32"] = out["numerical_rank_f32"] == min(n, m)
    out["full_rank_f64"] = out["numerical_rank_f64"] == min(n, m)
    out["row_sum_err"] = np.abs(A.sum(axis=-1) - 1.0).max(axis=-1)
    return out


# ----------------------------------------------------------------------------- attention blocks
def extract_blocks(probs, segment_ids_q, segment_ids_k=None):
    """Yield ``(batch, segment, block)`` for each packed example, ``block [L, H, n_q, n_k]``.

    ``probs`` is ``[L, B, H, Tq, Tk]`` (a 4-D ``[B, H, Tq, Tk]`` is treated as L = 1).  Rows are
    the query tokens with segment id ``s``, columns the key tokens with the same id (``s > 0``;
    0 is padding).  ``segment_ids_k`` defaults to ``segment_ids_q`` (self-attention).
    """
    probs = np.asarray(probs)
    if probs.ndim == 4:
        probs = probs[None]
    seg_q = np.asarray(segment_ids_q)
    seg_k = seg_q if segment_ids_k is None else np.asarray(segment_ids_k)
    L, B, H, Tq, Tk = probs.shape
    if seg_q.shape != (B, Tq) or seg_k.shape != (B, Tk):
        raise ValueError(f"segment ids {seg_q.shape}/{seg_k.shape} do not match probs {probs.shape}")
    for b in range(B):
        for s in np.unique(seg_q[b]):
            if s <= 0:
                continue
            rows, cols = np.flatnonzero(seg_q[b] == s), np.flatnonzero(seg_k[b] == s)
            if cols.size == 0:
                continue
            yield b, int(s), probs[:, b][:, :, rows[:, None], cols[None, :]]


def attention_block_metrics(probs, segment_ids_q, segment_ids_k=None, *, cross: bool | None = None,
                            keep_spectra: bool = False, chunk_elems: int = 1 << 24) -> pd.DataFrame:
    """Per (layer, head, example) rank metrics of the attention each example pays to itself.

    Args:
      probs: attention probabilities ``[L, B, H, Tq, Tk]`` as returned by
        ``model(batch, return_attention=True)`` (float32 is fine; metrics are float64).
      segment_ids_q, segment_ids_k: ``[B, Tq]`` / ``[B, Tk]`` ids, 0 = padding, several examples
        per packed row.  ``segment_ids_k=None`` means self-attention with the query ids.
      cross: treat as cross-attention (skip determinant metrics).  Default: True when
        ``segment_ids_k`` is given and differs from ``segment_ids_q``.
      keep_spectra: add a column ``sv`` holding each matrix's singular values.
      chunk_elems: max float64 elements per batched SVD call (memory bound).

    Returns a DataFrame with one row per matrix and columns :data:`METRIC_COLUMNS`
    (``n`` = query length of the block, ``n_k`` = key length).  ``logdet_exact`` is set only for
    square blocks that are lower-triangular within float32 tolerance; ``logdet_generic`` /
    ``slogdet_sign`` (numpy slogdet) are reported for every square self-attention block, and
    ``logdet_diff = logdet_generic - logdet_exact`` makes any disagreement explicit.
    ``row_sum_err`` (max |row sum - 1|) flags attention leaking across packed segments.

    Blocks of equal shape are stacked and processed with one batched SVD per chunk.  Speed:
    see :func:`time_metrics` (e.g. ``time_metrics(n=64)["matrices_per_second"]``).
    """
    if cross is None:
        cross = segment_ids_k is not None and (
            np.shape(segment_ids_k) != np.shape(segment_ids_q)
            or not np.array_equal(segment_ids_k, segment_ids_q))
    groups: dict[tuple[int, int], list] = {}
    for b, s, blk in extract_blocks(probs, segment_ids_q, segment_ids_k):
        groups.setdefault(blk.shape[-2:], []).append((b, s, blk))
    frames = []
    for (nq, nk), items in groups.items():
        stack = np.stack([blk for _, _, blk in items])          # [G, L, H, nq, nk]
        G, L, H = stack.shape[:3]
        flat = stack.reshape(-1, nq, nk)
        step = max(1, chunk_elems // (nq * nk))
        parts = [matrix_metrics(flat[i:i + step], determinant=not cross) for i in range(0, len(flat), step)]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        gi, li, hi = (x.ravel() for x in np.indices((G, L, H)))
        cols.update(layer=li, head=hi, batch=np.array([items[g][0] for g in gi]),
                    segment=np.array([items[g][1] for g in gi]), n=np.full(gi.size, nq),
                    n_k=np.full(gi.size, nk))
        frame = pd.DataFrame({c: cols[c] for c in METRIC_COLUMNS})
        if keep_spectra:
            frame["sv"] = list(singular_values(flat))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["layer", "head", "batch", "segment"], ignore_index=True)


def time_metrics(n: int = 64, n_matrices: int = 256, seed: int = 0, heads: int = 8) -> dict:
    """Time :func:`attention_block_metrics` on random causal softmax blocks of size ``n``.

    Returns ``{"n", "matrices", "seconds", "matrices_per_second"}``.  Example (2 shared CPU
    cores): ``time_metrics(64, 256)`` -> a few thousand 64x64 matrices/second.
    """
    rng = np.random.default_rng(seed)
    B = max(1, n_matrices // heads)
    s = rng.standard_normal((1, B, heads, n, n)).astype(np.float32)
    s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    seg = np.ones((B, n), np.int32)
    t0 = time.perf_counter()
    df = attention_block_metrics(p, seg)
    dt = time.perf_counter() - t0
    return {"n": n, "matrices": len(df), "seconds": dt, "matrices_per_second": len(df) / dt}


# ----------------------------------------------------------------------------- rank collapse
class Residual(NamedTuple):
    """``residual = ||X - 1 x^T||``, ``norm_x = ||X||``, ``relative = residual / norm_x``."""
    residual: np.ndarray
    norm_x: np.ndarray
    relative: np.ndarray


def _norm(R: np.ndarray, norm: str) -> np.ndarray:
    if norm == "fro":
        return np.sqrt(np.sum(R**2, axis=(-2, -1)))
    if norm == "l1inf":
        a = np.abs(R)
        n1 = a.sum(axis=-2).max(axis=-1)    # induced 1-norm: max column sum
        ninf = a.sum(axis=-1).max(axis=-1)  # induced inf-norm: max row sum
        return np.sqrt(n1 * ninf)
    raise ValueError(f"norm must be 'fro' or 'l1inf', got {norm!r}")


def rank_collapse_residual(X, norm: str = "l1inf", mask=None, center: str | None = None) -> Residual:
    """Distance of token representations ``X [..., n, d]`` from a rank-1 "all rows equal" matrix.

    Dong, Cordonnier & Loukas (2021) define ``res(X) = X - 1 x^T`` with
    ``x = argmin_x ||X - 1 x^T||`` and track ``||res(X)|| / ||X||`` through depth using the
    composite ``||X||_{1,inf} = sqrt(||X||_1 ||X||_inf)`` (induced 1- and inf-norms: max column
    and max row absolute sums).  The choice of ``x`` here (``center``):

    * ``"mean"`` (default for ``norm="fro"``): the row mean, the *exact* minimiser of the
      Frobenius residual (least squares, column by column).
    * ``"median"`` (default for ``norm="l1inf"``): the column-wise median, the exact minimiser
      of the ``||.||_1`` factor (each column's absolute deviation is minimised separately).
      The ``||.||_inf`` factor couples columns and has no closed-form minimiser, so the product
      is generally not minimised exactly: the value is an upper bound on the paper's residual
      (as is any fixed ``x``), and is exactly 0 iff all selected rows are equal.

    Args:
      mask: optional bool ``[..., n]`` selecting the rows (real tokens of one example) that
        form the matrix; the others are ignored (use :func:`rank_collapse_by_segment` for packs).
    """
    X = _f64(X)
    center = center or ("mean" if norm == "fro" else "median")
    m = np.ones(X.shape[:-1], bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), X.shape[:-1])
    Xm = np.where(m[..., None], X, np.nan)
    with np.errstate(invalid="ignore"):
        if center == "mean":
            x = np.nanmean(Xm, axis=-2, keepdims=True)
        elif center == "median":
            x = np.nanmedian(Xm, axis=-2, keepdims=True)
        else:
            raise ValueError(f"center must be 'mean' or 'median', got {center!r}")
    R = np.where(m[..., None], X - x, 0.0)
    res, nx = _norm(R, norm), _norm(np.where(m[..., None], X, 0.0), norm)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(nx > 0, res / np.where(nx > 0, nx, 1.0), np.nan)
    return Residual(res, nx, rel)


def rank_collapse_by_segment(hidden, segment_ids, norm: str = "l1inf", center: str | None = None) -> pd.DataFrame:
    """Residual per (layer, batch, segment) for hidden states ``[L, B, T, D]`` (``[B, T, D]`` -> L=1).

    Returns a DataFrame with columns layer, batch, segment, n, residual, norm_x, relative.
    """
    hidden = _f64(hidden)
    if hidden.ndim == 3:
        hidden = hidden[None]
    seg = np.asarray(segment_ids)
    rows = []
    for b in range(seg.shape[0]):
        for s in np.unique(seg[b]):
            if s <= 0:
                continue
            idx = np.flatnonzero(seg[b] == s)
            r = rank_collapse_residual(hidden[:, b, idx], norm=norm, center=center)
            for layer in range(hidden.shape[0]):
                rows.append((layer, b, int(s), idx.size, r.residual[layer], r.norm_x[layer], r.relative[layer]))
    return pd.DataFrame(rows, columns=["layer", "batch", "segment", "n", "residual", "norm_x", "relative"])

