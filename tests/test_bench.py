"""archcmp-bench in --quick mode: the tables have the expected rows, the numbers are finite and
positive, the MFU is built on the exact FLOP count, and a missing torch is reported, not fatal.
No timing assertions: the machine is shared."""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

from archcmp import bench
from archcmp.model.accounting import traced_matmul_flops
from archcmp.model.models import build_model
from archcmp.training.optim import make_optimizer
from archcmp.training.steps import make_train_step, split_microbatches


def table_rows(text: str, heading: str, first_cells: tuple[str, ...]) -> list[list[str]]:
    """Rows of the first markdown table under ``## heading`` whose first cells are ``first_cells``."""
    body = text.split("\n## " + heading, 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in ("|" + body).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and tuple(cells[:len(first_cells)]) == first_cells:
            rows.append(cells)
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%×"))


@pytest.mark.slow
def test_quick_train_without_torch(tmp_path, monkeypatch, capsys):
    # Simulate a machine without the [bench] extra, whatever this one has installed.
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    out = tmp_path / "bench.md"
    results = bench.run_cli(["--quick", "--archs", "decoder", "encdec", "--sections", "mfu", "train",
                             "--out", str(out)])
    printed = capsys.readouterr()
    report = out.read_text()
    assert report.splitlines()[0] == "# archcmp-bench"
    assert 'pip install -e ".[bench]"' in report and "not installed" in printed.err

    peak = results["mfu"]["peak"]
    assert math.isfinite(peak) and peak > 0
    assert [r["lib"] for r in results["mfu"]["rows"]] == ["jax"]

    for arch in ("decoder", "encdec"):
        (cells,) = table_rows(report, "Training step", (arch, "tiny"))
        # | arch | size | params | ours | HF eager | HF compile | ratio | MFU | mem | compile |
        assert number(cells[3]) > 0 and math.isfinite(number(cells[3]))
        assert cells[4].startswith("not installed") and cells[5].startswith("not installed")
        assert cells[6] == "—"
        assert 0 < number(cells[7]) <= 100
        assert number(cells[2].split("/")[0]) > 0

    by_arch = {r["arch"]: r for r in results["train"]}
    assert set(by_arch) == {"decoder", "encdec"}
    plan = bench.build_plan(bench_args(["--quick"]))
    for arch, row in by_arch.items():
        ours = row["variants"]["archcmp"]
        assert set(row["variants"]) == {"archcmp"}
        assert ours["step_seconds"] > 0 and math.isfinite(ours["final_loss"])
        # The MFU numerator is the exact count: every dot_general of the real, traced training
        # step (forward and backward, scans unrolled by their length) -- not an estimate.
        # Model FLOPs are the algorithm's: traced on the explicit attention path (the blocked default
        # recomputes each block's probabilities in its backward pass, extra work MFU does not credit).
        cfg = dataclasses.replace(bench.model_config(arch, "tiny", plan.vocab, plan.seq), attention_impl="explicit")
        graphdef, params = nnx.split(build_model(cfg, seed=0))
        tx = make_optimizer(bench.bench_optim(), total_steps=10)
        state = {"params": params, "opt_state": tx.init(params)}
        batch = split_microbatches(bench.make_batch(arch, row["batch"], plan.seq, plan.vocab), 1)
        traced = traced_matmul_flops(make_train_step(graphdef, tx, 1), state, batch, None)
        expected = tiny_train_flops(arch, row["batch"], plan.seq, plan.vocab)
        assert row["flops_per_step"] == traced == expected
        assert ours["mfu"] == pytest.approx(expected / ours["step_seconds"] / peak, rel=1e-12)
        assert row["params_ours"] == row["params_ours_formula"] == sum(x.size for x in jax.tree.leaves(params))
        assert row["tokens_per_step"] == row["batch"] * plan.seq * (2 if arch == "encdec" else 1)

    # bench.json beside bench.md: one record per training cell, the same figures as the table
    import json

    doc = json.loads(out.with_suffix(".json").read_text())
    assert [(r["arch"], r["size"]) for r in doc["train"]] == [("decoder", "tiny"), ("encdec", "tiny")]
    for rec in doc["train"]:
        ours = by_arch[rec["arch"]]["variants"]["archcmp"]
        assert rec["ours_tok_s"] == pytest.approx(ours["tokens_per_s"]) and rec["mfu"] == pytest.approx(ours["mfu"])
        assert rec["hf_best_tok_s"] is None and rec["ratio"] is None and rec["peak_mem_ratio"] is None  # no torch
    assert doc["matmul_peak_flops"] == pytest.approx(peak) and doc["platform"] == "cpu"


def tiny_train_flops(arch: str, batch: int, seq: int, vocab: int) -> int:
    """Training matmul FLOPs of one step of the bench's "tiny" shapes, written out by hand (2 per
    multiply-add; backward = 2x forward): d_model 32; decoder 2 layers, d_ff 64; encdec 1 + 1
    layers, d_ff 48, encoder and decoder both ``seq`` long; tied head, every position scored."""
    D = 32

    def layer(d_ff, keys, memory=0):  # per query token
        flops = 2 * D * 3 * D + 2 * D * D + 2 * 2 * keys * D + 2 * 2 * D * d_ff  # qkv, out, q.k and p.v, MLP
        if memory:
            flops += 2 * 2 * D * D + 2 * 2 * memory * D  # cross q and out, cross q.k and p.v
        return flops

    head = 2 * D * vocab
    if arch == "decoder":
        forward = seq * (2 * layer(64, seq) + head)
    else:
        memory_kv = seq * 2 * D * 2 * D  # the decoder layer projects K and V of every encoder token
        forward = seq * layer(48, seq) + memory_kv + seq * (layer(48, seq, memory=seq) + head)
    return 3 * batch * forward


def bench_args(argv):
    import argparse

    ns = argparse.Namespace(quick="--quick" in argv, archs=list(bench.ARCHS), sizes=None,
                            sections=list(bench.SECTIONS), no_torch=True, rounds=None, compile_layers=None,
                            compile_archs=None, ensemble_k=None)
    return ns


@pytest.mark.slow
def test_quick_compile_section_keeps_notes(tmp_path):
    out = tmp_path / "bench.md"
    out.write_text("old generated text\n" + bench.NOTES_MARKER + "\nhand-written profile notes\n")
    results = bench.run_cli(["--quick", "--no-torch", "--archs", "decoder", "--sections", "compile",
                             "--compile-layers", "1", "2", "--out", str(out)])
    report = out.read_text()
    assert "old generated text" not in report
    assert report.endswith(bench.NOTES_MARKER + "\nhand-written profile notes\n")  # notes survive a rewrite

    for mode in ("scan", "loop"):
        (cells,) = table_rows(report, "Compile time", ("decoder", mode))
        secs = [number(c) for c in cells[2:4]]
        assert all(math.isfinite(x) and x > 0 for x in secs)
        assert number(cells[4]) == pytest.approx(secs[1] / secs[0], abs=0.01)
    assert set(results["compile"]) == {("decoder", L, scan) for L in (1, 2) for scan in (True, False)}


@pytest.mark.slow
def test_quick_decode_section(tmp_path):
    out = tmp_path / "bench.md"
    results = bench.run_cli(["--quick", "--no-torch", "--archs", "decoder", "--sections", "decode",
                             "--out", str(out)])
    (cells,) = table_rows(out.read_text(), "Decoding", ("decoder", "tiny"))
    # | arch | size | params | batch | new tokens | cached | uncached | ratio | same tokens |
    assert int(cells[4]) == 8  # EOS disabled: every run generates all its tokens
    assert number(cells[5]) > 0 and number(cells[6]) > 0 and number(cells[7]) > 0
    assert cells[8] == "yes"  # cached and uncached greedy decoding agree token for token
    (row,) = results["decode"]
    assert row["cached"]["steps"] == row["uncached"]["steps"] == 8


@pytest.mark.slow
def test_quick_ensemble_section(tmp_path):
    out = tmp_path / "bench.md"
    results = bench.run_cli(["--quick", "--no-torch", "--archs", "decoder", "--sections", "ensemble",
                             "--ensemble-k", "4", "--out", str(out)])
    (cells,) = table_rows(out.read_text(), "k models in one vmapped step", ("decoder", "tiny"))
    # | arch | size | params per model | k | batch × seq | vmapped | sequential | ratio | compile | loss diff |
    assert int(cells[3]) == 4
    vmapped, sequential, ratio = number(cells[5]), number(cells[6]), number(cells[7])
    assert vmapped > 0 and sequential > 0 and ratio == pytest.approx(vmapped / sequential, rel=0.02)
    assert float(cells[9]) < 1e-5  # same steps from the same states: the same losses, up to batched rounding
    (row,) = results["ensemble"]
    assert row["tokens_per_step"] == 4 * row["batch"] * row["seq"]
    assert row["params_per_model"] == number(cells[2])


def test_persistent_cache_off_compiles_without_the_on_disk_cache(tmp_path):
    """The suite runs with an on-disk compilation cache; the bench's compile timings must not read it."""
    code = """
import os, sys
from pathlib import Path
import jax, jax.numpy as jnp
from archcmp.bench.common import persistent_cache_off
entries = lambda: len(list(Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).iterdir()))
jax.jit(lambda x: x * 2.0)(jnp.ones(3)).block_until_ready()
on = entries()
with persistent_cache_off():
    jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(5)).block_until_ready()
    off = entries()
jax.jit(lambda x: x * 4.0 - 1.0)(jnp.ones(7)).block_until_ready()
print(on, off, entries())
"""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    on, off, again = map(int, out.stdout.split())
    assert on > 0  # the cache is in use outside the block ...
    assert off == on  # ... nothing is written (or read) inside it ...
    assert again > off  # ... and it is back in use afterwards
