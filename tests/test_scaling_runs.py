"""Run loader and `archcmp-analyze scaling` CLI on a tiny fake sweep written to tmp_path."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from figures import png_pixels

from archcmp.analysis.scaling import cli as scaling
from archcmp.analysis.common.runs import FingerprintWarning, load_runs

LAWS = {  # arch -> (E, A, B, alpha, beta); distinct so the table can tell them apart
    "decoder": (1.5, 60.0, 300.0, 0.30, 0.32),
    "encoder": (1.7, 40.0, 500.0, 0.25, 0.35),
}
SIZES = {"s": 2e5, "m": 6e5, "l": 2e6, "xl": 6e6}
BUDGETS = (3e13, 1e14, 3e14, 1e15)


def write_run(root, name, **summary):
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def make_sweep(root, archs=LAWS, seed=0):
    rng = np.random.default_rng(seed)
    for arch in archs:
        E, A, B, a, b = LAWS[arch]
        for size, n in SIZES.items():
            for c in BUDGETS:
                fpt = 6.3 * n  # a bit above 6N, like attention FLOPs
                tokens = int(c / fpt)
                loss = (E + A * n ** -a + B * tokens ** -b) * np.exp(rng.normal(0, 0.003))
                write_run(root, f"{arch}/{size}/C{c:.0e}", arch=arch, size=size,
                          params_total=n * 1.2, params_nonembedding=n, flops_per_token=fpt,
                          train_tokens=tokens, train_flops=fpt * tokens, eval_loss=loss,
                          best_eval_loss=loss, eval_metrics={"accuracy": 0.5},
                          data_fingerprint=f"fp-{tokens}", tokens_per_sec=1e4, wall_seconds=10.0,
                          status="complete", seed=0, steps=100, experiment="fake")
    return root


def test_loader_reads_nested_runs_and_flattens(tmp_path):
    make_sweep(tmp_path / "sweep")
    write_run(tmp_path / "sweep", "broken/run", arch="decoder", status="failed", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FingerprintWarning)
        df = load_runs([tmp_path / "sweep"])
    assert len(df) == 2 * 4 * 4 + 1
    assert set(df["status"]) == {"complete", "failed"}
    assert "eval_metrics.accuracy" in df.columns
    assert df["fingerprint_ok"].all()
    assert df["run_name"].str.startswith(("decoder/", "encoder/", "broken/")).all()


def test_loader_warns_on_disagreeing_fingerprint(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    # a token budget no other run has, so the peer group is exactly what we write here;
    # peers = same (seed, train_tokens), any arch/size/status
    common = dict(seed=0, train_tokens=123457, data_fingerprint="fp-good")
    write_run(root, "decoder/peer", arch="decoder", status="complete", **common)
    write_run(root, "prefix_lm/peer", arch="prefix_lm", status="failed", **common)
    write_run(root, "encoder/odd", arch="encoder", status="complete",
              **{**common, "data_fingerprint": "fp-other"})
    with pytest.warns(FingerprintWarning, match="2/3 runs.*disagreeing: encoder/odd"):
        df = load_runs([root])
    assert df.loc[~df["fingerprint_ok"], "run_name"].tolist() == ["encoder/odd"]
    # 1 vs 1: no majority, both runs are flagged and the warning says so
    (root / "prefix_lm/peer/summary.json").unlink()
    with pytest.warns(FingerprintWarning, match="no majority"):
        df = load_runs([root])
    assert sorted(df.loc[~df["fingerprint_ok"], "run_name"]) == ["decoder/peer", "encoder/odd"]
    # a different seed is a different data stream: not a peer, no warning
    (root / "encoder/odd/summary.json").write_text(json.dumps({**common, "seed": 1, "data_fingerprint": "x"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FingerprintWarning)
        assert load_runs([root])["fingerprint_ok"].all()


def test_loader_falls_back_to_metrics_jsonl(tmp_path):
    d = write_run(tmp_path, "r", arch="decoder", status="running", seed=0, train_tokens=10)
    rows = [{"step": 1, "train_loss": 3.0}, {"step": 2, "eval_loss": 2.5}, {"step": 3, "eval_loss": 2.25}]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 4, ")
    df = load_runs(tmp_path)
    assert df.loc[0, "eval_loss"] == 2.25
    assert df.loc[0, "eval_loss_source"] == "metrics.jsonl"


def test_loader_wandb_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match="offline"):
        load_runs(["wandb:someone/project"])


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory):
    """One CLI run on the fake sweep (a failed run beside it), logged to an offline wandb run:
    the table, CSVs, plots and the wandb record are checked by the tests below."""
    root = make_sweep(tmp_path_factory.mktemp("scaling") / "sweep")
    write_run(root, "decoder/failed", arch="decoder", status="failed", seed=0, eval_loss=9.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        rc = scaling.run_cli([str(root), "--bootstrap", "4", "--grid", "coarse", "--wandb", "--wandb-mode", "offline"])
    assert rc == 0
    return root / "analysis" / "scaling"


def test_cli_writes_table_csv_and_plots(cli_out):
    out = cli_out
    table = (out / "table.md").read_text()
    header = [c.strip() for c in table.splitlines()[2].split("|")[2:-1]]
    assert header == ["decoder", "encoder"]
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 32 and set(runs["status"]) == {"complete"}
    for png in ("loss_vs_N.png", "loss_vs_D.png", "loss_vs_C.png", "isoflops.png"):
        assert min(png_pixels(out / png).shape[:2]) >= 200, png  # a PNG with a drawn figure in it
    # the fitted exponents in the table are the generating ones (noise 0.3%)
    row = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
           for ln in table.splitlines() if ln.startswith("| ")}
    alpha = [float(v.split()[0]) for v in row["alpha (L(N,D))"]]
    assert alpha == pytest.approx([LAWS["decoder"][3], LAWS["encoder"][3]], abs=0.05)
    assert "[" in row["beta (L(N,D))"][0]  # CI present
    assert float(row["k = FLOPs/token/N"][0]) == pytest.approx(6.3 / 1.2, rel=1e-3)


def test_cli_nonembedding_and_small_arch_skipped(tmp_path):
    root = make_sweep(tmp_path / "sweep", archs=["decoder"])
    write_run(root, "encdec/only", arch="encdec", status="complete", seed=0, params_total=1e6,
              params_nonembedding=8e5, flops_per_token=6e6, train_tokens=1e7, train_flops=6e13,
              eval_loss=3.0, data_fingerprint="fp-x")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"\[encdec\]"):
        rc = scaling.run_cli([str(root), "--out", str(out), "--params", "nonembedding",
                              "--bootstrap", "0", "--grid", "coarse"])
    assert rc == 0
    runs = pd.read_csv(out / "runs.csv")
    np.testing.assert_allclose(runs["N"], runs["params_nonembedding"])
    table = (out / "table.md").read_text()
    assert "encdec" in table and "not fitted" in table
    png_pixels(out / "isoflops.png")


def test_cli_no_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert scaling.run_cli([str(tmp_path / "empty")]) == 1
    assert "no complete runs" in capsys.readouterr().out
    assert scaling.run_cli([str(tmp_path / "missing")]) == 2


def _ladder_frame(ratios, E=1.6, A=30.0, B=200.0, a=0.3, b=0.35, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for r in ratios:
        for n in (1e5, 3e5, 1e6, 3e6):
            loss = (E + A * n ** -a + B * (r * n) ** -b) * np.exp(rng.normal(0, 0.002))
            rows.append(dict(arch="decoder", status="complete", params_total=n, params_nonembedding=n,
                             train_tokens=r * n, train_flops=6 * n * r * n, flops_per_token=6 * n,
                             eval_loss=loss))
    return scaling.prepare(pd.DataFrame(rows))


def test_ln_points_uses_the_largest_ladder_ratio_when_the_frontier_is_too_short():
    d = _ladder_frame([5, 20])
    n, loss, on = scaling.ln_points(d)
    assert on == "runs at D/N ≈ 20" and sorted(n) == [1e5, 3e5, 1e6, 3e6]
    # at a fixed ratio L(N) = E + A N^-a + B r^-b N^-b: loss falls with N, and the fit sees it
    fit = scaling.sf.fit_power_law(n, loss)
    assert 0.2 < fit.alpha < 0.45, fit


def test_frontier_bootstrap_gives_a_gamma_interval_around_the_point_fit(tmp_path):
    d = scaling.prepare(load_runs([make_sweep(tmp_path / "sweep", archs=["decoder"])]))
    res = scaling.fit_arch(d[d["arch"] == "decoder"], "decoder", n_boot=20, starts="coarse")
    lo, hi = res.lc_ci["alpha"]
    assert np.isfinite([lo, hi]).all() and lo <= res.lc.alpha <= hi
    table = scaling.make_table([res], [1e14], params="total")
    assert "[" in table.loc["gamma (L(C) frontier)", "decoder"]
    assert table.loc["D_opt @ C=1e+14", "decoder"] != "—"


def test_cli_logs_its_table_and_figures_to_wandb_like_the_other_analyses(cli_out):
    # the shared --wandb options (archcmp.analysis.common.wandb_log): one offline run with the table and plots
    import time

    from archcmp.tracking.wandb_tracker import offline_records

    out = cli_out
    files = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    deadline, logged = time.monotonic() + 30, set()
    while not {"loss_vs_N", "isoflops", "table", "runs"} <= logged and time.monotonic() < deadline:
        time.sleep(0.2)
        logged = {(it.key or it.nested_key[0]).split(".")[0] for rec in offline_records(files[0])  # media: key.*
                  if rec.WhichOneof("record_type") == "history" for it in rec.history.item}
    assert {"loss_vs_N", "loss_vs_D", "loss_vs_C", "isoflops", "table", "runs"} <= logged, logged
    fits = pd.read_csv(out / "fits.csv")
    assert set(fits.columns) >= {"decoder", "encoder"}
