"""Rank comparisons that do not move with n, the prefix-vs-causal contrast inside the prefix-LM's
matrices, and rank against eval loss (archcmp.analysis.rank.quality), on constructed matrices and
curves whose answers are known without the code under test."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from archcmp.analysis.common import capture as C
from archcmp.analysis.rank import quality as q
from archcmp.analysis.rank.metrics import attention_block_metrics


def uniform_causal(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def _metrics(blocks: dict[str, np.ndarray]) -> pd.DataFrame:
    """Metrics rows of single matrices, one kind each, as capture_metrics would give them."""
    frames = []
    for kind, A in blocks.items():
        nq, nk = A.shape
        seg_q, seg_k = np.ones((1, nq), int), np.ones((1, nk), int)
        df = attention_block_metrics(A[None, None, None], seg_q, None if nq == nk else seg_k, cross=nq != nk)
        frames.append(df.assign(kind=kind))
    return pd.concat(frames, ignore_index=True)


def test_relative_effective_rank_does_not_move_with_n():
    """The uniform causal matrix scores exactly 1 at every n; the rank-1 uniform (all 1/n) matrix,
    whose effective rank is 1, scores 1 / erank(uniform causal n), which falls with n; cross
    (non-square) blocks get no score."""
    d = _metrics({"c10": uniform_causal(10), "c40": uniform_causal(40), "u10": np.full((10, 10), 0.1),
                  "u40": np.full((40, 40), 1 / 40), "x": np.full((5, 8), 1 / 8)})
    r = q.add_rel_causal(d).set_index("kind")[q.REL]
    assert r["c10"] == pytest.approx(1.0, abs=1e-12) and r["c40"] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(r["x"])
    # effective rank of the uniform causal matrix, from its singular values (numpy, not the module)
    for n, key in ((10, "u10"), (40, "u40")):
        sv = np.linalg.svd(uniform_causal(n), compute_uv=False)
        p = sv / sv.sum()
        assert r[key] == pytest.approx(1 / math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert r["u40"] < r["u10"] < 1


def _prefix_lm_capture(p: int, t: int, prefix_share: float):
    """A prefix-LM attention matrix of one example: BOS..SEP prefix of p tokens attending uniformly
    among themselves (rank 1), t targets putting ``prefix_share`` uniformly on the prefix and the rest
    uniformly on the targets up to themselves (a uniform causal t x t block after renormalising)."""
    n = p + t
    A = np.zeros((n, n))
    A[:p, :p] = 1 / p
    A[p:, :p] = prefix_share / p
    A[p:, p:] = (1 - prefix_share) * uniform_causal(t)
    assert np.allclose(A.sum(axis=1), 1)
    batch = {"segment_ids": np.ones((1, n), int), "prefix_mask": np.arange(n)[None] < p}
    cap = C.Capture(np.zeros((1, n, 3)), {"self": A[None, None, None].astype(np.float32)})
    return cap, batch


def test_prefix_and_causal_blocks_of_one_prefix_lm_matrix():
    cap, batch = _prefix_lm_capture(p=12, t=20, prefix_share=0.7)
    df = q.add_rel_causal(C.capture_metrics(cap, batch, "prefix_lm")).set_index("kind")
    assert df.loc["prefix", "n"] == 12 and df.loc["causal", "n"] == 20 and df.loc["self", "n"] == 32
    assert df.loc["causal", "row_sum_err"] < 1e-6                       # rows renormalised over target keys
    assert df.loc["causal", q.REL] == pytest.approx(1.0, abs=1e-6)     # exactly the uniform causal block
    assert df.loc["prefix", "effective_rank"] == pytest.approx(1.0, abs=1e-5)  # rank-1 uniform prefix
    means = q.checkpoint_means(df.reset_index().assign(run="r", arch="prefix_lm", size="nano", n_heads=1,
                                                       heads_tag="h1x8", seed=0, step=50))
    sv = np.linalg.svd(uniform_causal(12), compute_uv=False)
    ref12 = math.exp(-(sv / sv.sum() * np.log(sv / sv.sum())).sum())       # erank of the uniform causal 12 x 12
    c = q.prefix_contrast(means).iloc[0]
    assert c["prefix"] == pytest.approx(1 / ref12, rel=1e-5) and c["causal"] == pytest.approx(1.0, abs=1e-6)
    assert c["causal_minus_prefix"] == pytest.approx(1 - 1 / ref12, rel=1e-5)


def test_renormalise_rows_leaves_rows_without_mass_at_zero():
    probs = np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])[None, None, None]   # [1, 1, 1, 2, 3]
    out = C.renormalise_rows(probs, np.array([[0, 1, 1]]))
    np.testing.assert_allclose(out[0, 0, 0], [[0, 0.5, 0.5], [0, 0, 0]])


def test_spearman_matches_scipy_and_refuses_degenerate_input():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=9), rng.normal(size=9)
    y[:3] = y[3]                                                          # ties
    assert q.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    assert q.spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1.0)
    assert q.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(q.spearman([1, 2], [3, 4]))                           # too few points
    assert np.isnan(q.spearman([1, 2, 3], [5, 5, 5]))                     # constant
    assert q.spearman([1, np.nan, 2, 3], [1, 9, 2, 3]) == pytest.approx(1.0)  # NaN pairs dropped


def test_read_evals_keeps_the_last_evaluation_of_a_step(tmp_path):
    rows = [{"step": 25, "loss": 3.0}, {"step": 50, "eval_loss": 2.5, "eval_accuracy": 0.2},
            {"step": 50, "eval_loss": 2.4, "eval_accuracy": 0.3}, {"step": 100, "eval_loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{\"step\": 1")  # killed mid-line
    d = q.read_evals(tmp_path)
    assert d["step"].tolist() == [50, 100] and d["eval_loss"].tolist() == [2.4, 2.0]
    assert d["eval_accuracy"].iloc[0] == 0.3 and np.isnan(d["eval_accuracy"].iloc[1])


def _curves(rel: dict[int, list[float]], loss: list[float]) -> pd.DataFrame:
    steps = [0, 50, 100, 150, 200]
    rows = []
    for seed, r in rel.items():
        for i, s in enumerate(steps):
            rows.append({"run": f"decoder-nano-s{seed}", "arch": "decoder", "size": "nano", "n_heads": 2,
                         "heads_tag": "h2x16", "seed": seed, "kind": "self", "step": s, q.REL: r[i], "n": 63.0})
    means = pd.DataFrame(rows)
    evals = pd.DataFrame([{"run": f"decoder-nano-s{seed}", "step": s, "eval_loss": loss[i - 1]}
                          for seed in rel for i, s in enumerate(steps) if s > 0])  # no evaluation at step 0
    return q.join_evals(means, evals)


def test_rank_quality_per_run_and_interval_over_seeds():
    """Seed 0: rank falls as loss falls (rho = +1); seed 1: rank rises (rho = -1); seed 2: one swap
    (rho = 1 - 6*2/(4*15) = 0.8). Mean 0.8/3 with the t-interval computed by hand."""
    loss = [3.0, 2.5, 2.2, 2.1]
    j = _curves({0: [9, 0.9, 0.8, 0.7, 0.6], 1: [9, 0.6, 0.7, 0.8, 0.9], 2: [9, 0.9, 0.7, 0.8, 0.6]}, loss)
    rq = q.rank_quality(j).set_index("seed")
    assert (rq["checkpoints"] == 4).all() and (rq["first_step"] == 50).all()   # step 0 has no eval loss
    assert rq.loc[0, "spearman_rel_vs_eval_loss"] == pytest.approx(1.0)
    assert rq.loc[1, "spearman_rel_vs_eval_loss"] == pytest.approx(-1.0)
    assert rq.loc[2, "spearman_rel_vs_eval_loss"] == pytest.approx(0.8)
    assert rq.loc[0, "rel_last"] == 0.6 and rq.loc[0, "eval_loss_last"] == 2.1
    s = q.over_seeds(rq.reset_index(), "spearman_rel_vs_eval_loss", ["size", "arch", "kind"]).iloc[0]
    v = np.array([1.0, -1.0, 0.8])
    half = 4.302652729911275 * v.std(ddof=1) / math.sqrt(3)                 # t(0.975, 2 d.o.f.)
    assert s["n_seeds"] == 3 and s["mean"] == pytest.approx(v.mean())
    assert (s["lo"], s["hi"]) == pytest.approx((v.mean() - half, v.mean() + half))
    one = q.over_seeds(rq.reset_index().iloc[:1], "spearman_rel_vs_eval_loss", ["size"]).iloc[0]
    assert one["n_seeds"] == 1 and np.isnan(one["lo"])                     # no interval from one seed


def test_seed_table_names_three_seed_members_as_the_rules_expect():
    """``archcmp-analyze seeds`` on a 3-seed rank sweep (member runs ``<arch>-<size>[-h1]-shakespeare-s<k>``):
    rank rows per (size, arch/kind, seed) from the default-head runs only, final step only, relative to
    the uniform causal matrix of each block's n; eval-loss rows per (size/arch, h<heads>, seed)."""
    from archcmp.analysis.seeds.cli import rank_seed_table

    ref = {}
    for n in (63, 30, 33):
        sv = np.linalg.svd(uniform_causal(n), compute_uv=False)
        ref[n] = math.exp(-(sv / sv.sum() * np.log(sv / sv.sum())).sum())
    rows, runs = [], []
    for seed in range(3):
        for arch, heads, kinds in (("decoder", 4, {"self": 63}), ("decoder", 1, {"self": 63}),
                                   ("prefix_lm", 4, {"self": 63, "prefix": 30, "causal": 33})):
            run = f"{arch}-micro{'-h1' if heads == 1 else ''}-shakespeare-s{seed}"
            runs.append({"run": run, "arch": arch, "size": "micro", "n_heads": heads, "eval_loss": 2.0 + seed / 10 + heads / 100})
            for kind, n in kinds.items():
                for step, er in ((0, 50.0), (300, 10.0 + seed + (heads == 1))):
                    for head in range(heads):  # two examples per head, mean = er
                        rows += [{"run": run, "arch": arch, "size": "micro", "n_heads": heads, "kind": kind, "step": step,
                                  "head": head, "n": n, "n_k": n, "effective_rank": er + d, "effective_rank_frac": (er + d) / n}
                                 for d in (-1.0, 1.0)]
    t = rank_seed_table(pd.DataFrame(rows), pd.DataFrame(runs))
    rel = t[t["metric"] == "effective_rank_rel_causal"]
    assert set(rel["condition"]) == {"micro"}
    assert set(rel["group"]) == {"decoder/self", "prefix_lm/self", "prefix_lm/prefix", "prefix_lm/causal"}
    for (group, seed), v in rel.set_index(["group", "seed"])["value"].items():
        n = {"decoder/self": 63, "prefix_lm/self": 63, "prefix_lm/prefix": 30, "prefix_lm/causal": 33}[group]
        assert v == pytest.approx((10.0 + seed) / ref[n], rel=1e-9)          # h4 runs, final step
    loss = t[t["metric"] == "eval_loss"].set_index(["condition", "group", "seed"])["value"]
    assert loss[("micro/decoder", "h1", 2)] == pytest.approx(2.21) and loss[("micro/decoder", "h4", 0)] == pytest.approx(2.04)
    assert sorted(loss.index.get_level_values("seed").unique()) == [0, 1, 2]
