"""Shared pieces of archcmp-bench: the plan, model shapes and synthetic batches, memory and CPU-share
probes, and the alternating (A, B, A, B, ...) measurement every section uses."""
from __future__ import annotations

import contextlib
import gc
import ctypes
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archcmp.data import vocab
from archcmp.model.config import ARCHS, ModelConfig
from archcmp.training.settings import OptimSettings
from archcmp.model.archs import arch_spec

SECTIONS = ("mfu", "train", "compile", "decode", "ensemble")
INSTALL_HINT = 'pip install -e ".[bench]"  (torch==2.13.0 CPU build + transformers)'
NOTES_MARKER = "<!-- notes: archcmp-bench keeps everything below this line when it rewrites the file -->"

# Model shapes. "3M" and "20M" are the project's own size ladder (conf/size/small.yaml and
# base.yaml): encdec splits the depth and uses d_ff = 3 d_model so its parameters match.
SHAPES: dict[str, tuple[dict, dict]] = {
    "3M": (dict(d_model=192, n_layers=6, n_heads=6, d_ff=768),
           dict(d_model=192, n_enc_layers=3, n_dec_layers=3, n_heads=6, d_ff=576)),
    "20M": (dict(d_model=384, n_layers=10, n_heads=6, d_ff=1536),
            dict(d_model=384, n_enc_layers=5, n_dec_layers=5, n_heads=6, d_ff=1152)),
    "tiny": (dict(d_model=32, n_layers=2, n_heads=2, d_ff=64),
             dict(d_model=32, n_enc_layers=1, n_dec_layers=1, n_heads=2, d_ff=48)),
    # conf/size/nano.yaml: ~100k parameters with a 1024-token vocabulary (the ensemble section)
    "nano": (dict(d_model=48, n_layers=2, n_heads=4, d_ff=192),
             dict(d_model=48, n_enc_layers=1, n_dec_layers=1, n_heads=4, d_ff=144)),
}
# Each architecture in the style of the HF model it is compared with.
STYLE = {
    "decoder": dict(pos_encoding="learned", norm="layernorm", norm_position="pre", activation="gelu"),
    "prefix_lm": dict(pos_encoding="learned", norm="layernorm", norm_position="pre", activation="gelu"),
    "encoder": dict(pos_encoding="learned", norm="layernorm", norm_position="post", activation="gelu"),
    "encdec": dict(pos_encoding="relative", norm="rmsnorm", norm_position="pre", activation="relu"),
}
HF_MODEL = {"decoder": "GPT2LMHeadModel", "prefix_lm": "GPT2LMHeadModel + 4-D prefix mask",
            "encoder": "BertForMaskedLM", "encdec": "T5ForConditionalGeneration"}


@dataclass
class Plan:
    """Everything the sections need to know; ``--quick`` shrinks it."""

    archs: list[str]
    sizes: list[str]
    sections: list[str]
    vocab: int = 1024
    seq: int = 256
    batch: dict[str, int] = field(default_factory=lambda: {"3M": 8, "20M": 8, "tiny": 2})
    rounds: dict[str, int] = field(default_factory=lambda: {"3M": 5, "20M": 3, "tiny": 2})
    steps_per_round: dict[str, int] = field(default_factory=lambda: {"3M": 2, "20M": 1, "tiny": 2})
    warmup: int = 1
    compile_archs: list[str] = field(default_factory=lambda: ["decoder", "encdec"])
    compile_layers: list[int] = field(default_factory=lambda: [2, 12, 24])
    compile_size: str = "3M"
    compile_reps: int = 1
    decode_size: str = "3M"
    decode_batch: int = 4
    decode_new: int = 256
    decode_prompt: int = 14
    decode_rounds: int = 2
    matmul_sizes: list[int] = field(default_factory=lambda: [2048, 4096])
    matmul_reps: int = 5
    ensemble_archs: list[str] = field(default_factory=lambda: ["decoder", "encdec"])
    ensemble_k: int = 8
    ensemble_size: str = "nano"
    ensemble_batches: list[int] = field(default_factory=lambda: [4, 32])  # rows per model and step; 32: conf default
    ensemble_seq: int = 32
    ensemble_rounds: int = 5
    ensemble_steps: int = 5
    torch: bool = True
    quick: bool = False


@contextlib.contextmanager
def persistent_cache_off():
    """Compile without JAX's persistent compilation cache inside the block (and restore it after).

    Compile times are what the bench measures: a warm on-disk cache (the test suite sets one
    through ``JAX_COMPILATION_CACHE_DIR``) would turn them into cache reads. JAX decides once per
    process whether the cache is in use, so the decision is reset on the way in and out.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", was)
        compilation_cache.reset_cache()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# ---- memory: RSS high-water mark between resets -------------------------------------------------
class RSS:
    """Peak resident memory of a stretch of code, from the kernel's ``VmHWM``.

    ``reset()`` returns freed heap pages to the OS (``malloc_trim``) and resets the high-water mark
    (``/proc/self/clear_refs``), so ``peak_above()`` is the most the process grew above what it held
    at the reset: activations, gradients and temporaries of the step, not the resident model and
    optimizer state. None where the kernel interface is missing.
    """

    def __init__(self) -> None:
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        self.base: int | None = None

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def reset(self) -> None:
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._status("VmRSS")
        except OSError:
            self.base = None

    def peak_above(self) -> int | None:
        peak = self._status("VmHWM")
        return None if peak is None or self.base is None else max(peak - self.base, 0)

    def current(self) -> int | None:
        return self._status("VmRSS")


class CPUShare:
    """Share of the machine's CPU time used by *other* processes over a stretch of code (from
    ``/proc/stat`` minus this process's own CPU time): how contended a measurement was."""

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: tuple[float, float, float] | None = None

    def _read(self) -> tuple[float, float, float] | None:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        total = sum(fields[:8]) / self._tick
        busy = total - (fields[3] + fields[4]) / self._tick  # minus idle and iowait
        t = os.times()
        return total, busy, t.user + t.system

    def start(self) -> None:
        self._start = self._read()

    def others(self) -> float | None:
        end = self._read()
        if end is None or self._start is None or end[0] <= self._start[0]:
            return None
        d_total, d_busy, d_self = (e - s for e, s in zip(end, self._start))
        return min(max((d_busy - d_self) / d_total, 0.0), 1.0)


# ---- shapes and batches --------------------------------------------------------------------------
def model_config(arch: str, size: str, vocab_size: int, max_len: int, **extra: Any) -> ModelConfig:
    single, encdec = SHAPES[size]
    shape = encdec if arch_spec(arch).encoder_stack else single
    return ModelConfig(arch=arch, vocab_size=vocab_size, max_len=max_len, tie_embeddings=True,
                       **STYLE[arch], **{**shape, **extra})


def make_batch(arch: str, batch: int, seq: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One synthetic batch in the formatter layout of ``arch`` (docs/design.md), every row one
    full-length example. Scored positions (``weights``): decoder and encdec every position,
    prefix_lm the positions after the prefix (first half), encoder a random 15% (MLM)."""
    rng = np.random.default_rng(seed)
    tokens = lambda: rng.integers(vocab.N_SPECIAL, vocab_size, (batch, seq)).astype(np.int32)  # noqa: E731
    pos = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()
    ones = np.ones((batch, seq), np.int32)
    out = {"inputs": tokens(), "targets": tokens(), "segment_ids": ones, "positions": pos}
    weights = np.ones((batch, seq), np.float32)
    spec = arch_spec(arch)
    if spec.prompt_is_prefix:
        out["prefix_mask"] = pos < seq // 2
        weights = (~out["prefix_mask"]).astype(np.float32)
    elif spec.mask_fill:
        weights = (rng.random((batch, seq)) < 0.15).astype(np.float32)
    elif spec.encoder_stack:
        out.update(enc_inputs=tokens(), enc_segment_ids=ones.copy(), enc_positions=pos.copy())
    out["weights"] = weights
    return out


def tokens_per_row(arch: str, seq: int) -> int:
    """Positions processed per row: encoder and decoder positions for encdec."""
    return 2 * seq if arch_spec(arch).encoder_stack else seq


def bench_optim() -> OptimSettings:
    """The project's default optimizer (conf/optimizer/adamw.yaml)."""
    return OptimSettings(lr=3e-3, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, warmup_steps=20,
                         min_lr_ratio=0.1, clip_norm=1.0)


# ---- alternating measurement ---------------------------------------------------------------------
def alternate(variants: list, rounds: int, steps: int, rss: RSS, label: str) -> dict[str, dict]:
    """Run ``steps`` timed steps of each variant per round, variants in rotating order each round.
    -> name -> {"times": [...], "peak": bytes above the reset or None}."""
    out = {v.name: {"times": [], "peak": None, "others": []} for v in variants}
    share = CPUShare()
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            rss.reset()
            share.start()
            for _ in range(steps):
                t0 = time.perf_counter()
                v.step()
                out[v.name]["times"].append(time.perf_counter() - t0)
            others = share.others()
            if others is not None:
                out[v.name]["others"].append(others)
            peak = rss.peak_above()
            if peak is not None:
                out[v.name]["peak"] = max(out[v.name]["peak"] or 0, peak)
        msg = ", ".join(f"{v.name} {statistics.median(out[v.name]['times']):.3f}s" for v in variants)
        log(f"{label}: round {r + 1}/{rounds}: median step {msg}")
    return out


