"""archcmp-bench: training speed, MFU, compile time and decode speed of archcmp against the
PyTorch implementation a user would otherwise pick (Hugging Face ``transformers``).

Everything runs in one process. Competing variants are measured in alternating rounds
(A, B, C, A, B, C, ...) so that drift of a shared machine lands on all of them; every figure
is a median over the rounds. Sections (``--sections``):

  mfu      dense float32 matmul peak of this machine (jnp and torch, best of both)
  train    training step (forward + backward + AdamW) tokens/s and peak memory: archcmp vs HF
           eager vs HF ``torch.compile``; archcmp's model FLOPs utilisation (exact FLOP count
           from :mod:`archcmp.accounting` over the measured matmul peak)
  compile  lower + XLA compile time of the training step at 2/12/24 layers, scan on and off
  decode   greedy decoding of 256 new tokens with and without the KV cache
  ensemble k=8 ~100k-parameter models in one vmapped step (``train.num_seeds``) vs the same 8 one
           after another, at 4 and 32 rows per model (:mod:`archcmp.bench_ensemble`)

The torch columns need the optional extra (``pip install -e ".[bench]"``); without it they
read "not installed" and everything else still runs.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archcmp.accounting import count_params, train_flops_per_row
from archcmp.config import ModelConfig
from archcmp.data import vocab
from archcmp.models import build_model
from archcmp.optim import make_optimizer
from archcmp.run_config import OptimSettings
from archcmp.steps import make_train_step, split_microbatches

ARCHS = ("encoder", "decoder", "prefix_lm", "encdec")
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
    shape = encdec if arch == "encdec" else single
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
    if arch == "prefix_lm":
        out["prefix_mask"] = pos < seq // 2
        weights = (~out["prefix_mask"]).astype(np.float32)
    elif arch == "encoder":
        weights = (rng.random((batch, seq)) < 0.15).astype(np.float32)
    elif arch == "encdec":
        out.update(enc_inputs=tokens(), enc_segment_ids=ones.copy(), enc_positions=pos.copy())
    out["weights"] = weights
    return out


def tokens_per_row(arch: str, seq: int) -> int:
    """Positions processed per row: encoder and decoder positions for encdec."""
    return 2 * seq if arch == "encdec" else seq


def bench_optim() -> OptimSettings:
    """The project's default optimizer (conf/optimizer/adamw.yaml)."""
    return OptimSettings(lr=3e-3, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, warmup_steps=20,
                         min_lr_ratio=0.1, clip_norm=1.0)


# ---- our training step ---------------------------------------------------------------------------
class OursTrainer:
    """archcmp's real training step (``steps.make_train_step`` with the project optimizer)."""

    name = "archcmp"

    def __init__(self, cfg: ModelConfig, batch: dict[str, np.ndarray]):
        self.cfg = cfg
        model = build_model(cfg, seed=0)
        graphdef, params = nnx.split(model)
        self.n_params = int(sum(x.size for x in jax.tree.leaves(params)))
        tx = make_optimizer(bench_optim(), total_steps=10_000)
        self.state = {"params": params, "opt_state": tx.init(params)}
        self.batch = jax.device_put(split_microbatches(batch, 1))
        self.jitted = make_train_step(graphdef, tx, accum=1)
        t0 = time.perf_counter()
        lowered = self.jitted.lower(self.state, self.batch, None)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.compile_seconds = t2 - t0
        self.lower_seconds = t1 - t0
        self.xla_memory = _xla_memory(self.compiled)
        self.last_loss = float("nan")

    def step(self) -> None:
        self.state, metrics = self.compiled(self.state, self.batch, None)
        jax.block_until_ready((self.state, metrics))
        self.last_loss = float(metrics["train_loss"])

    def close(self) -> None:
        self.state = self.batch = self.compiled = self.jitted = None


def _xla_memory(compiled) -> dict[str, int] | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
            "aliased": int(m.alias_size_in_bytes), "temps": int(m.temp_size_in_bytes)}


# ---- the torch side (optional) -------------------------------------------------------------------
def torch_status() -> tuple[bool, str]:
    """(available, versions or the reason it is not)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return False, f"not installed ({exc.name or exc}); install with: {INSTALL_HINT}"
    return True, f"torch {torch.__version__}, transformers {transformers.__version__}"


def _hf_model(arch: str, cfg: ModelConfig):
    """The HF model of the same shape (dropout off, sdpa attention, tied embeddings)."""
    import transformers as tf

    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=True)
    if arch in ("decoder", "prefix_lm"):
        conf = tf.GPT2Config(n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                             n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_pytorch_tanh",
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
                             **common)
        return tf.GPT2LMHeadModel(conf)
    if arch == "encoder":
        conf = tf.BertConfig(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                             num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff,
                             hidden_act="gelu_pytorch_tanh", max_position_embeddings=cfg.max_len,
                             type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             layer_norm_eps=cfg.norm_eps, **common)
        return tf.BertForMaskedLM(conf)
    conf = tf.T5Config(d_model=cfg.d_model, d_kv=cfg.head_size, d_ff=cfg.d_ff, num_layers=cfg.enc_layers,
                       num_decoder_layers=cfg.dec_layers, num_heads=cfg.n_heads,
                       relative_attention_num_buckets=cfg.rel_buckets,
                       relative_attention_max_distance=cfg.rel_max_distance, dropout_rate=0.0,
                       feed_forward_proj="relu", layer_norm_epsilon=cfg.norm_eps, decoder_start_token_id=vocab.BOS,
                       pad_token_id=vocab.PAD, **common)
    return tf.T5ForConditionalGeneration(conf)


class HFTrainer:
    """The same shape in Hugging Face ``transformers``, trained the same way: logits -> weighted
    token cross-entropy over ``weights`` (the same loss layout as ours) -> backward -> global-norm
    clipping -> AdamW (fused CPU kernel; weight decay on matrices only, like ours)."""

    def __init__(self, arch: str, cfg: ModelConfig, batch: dict[str, np.ndarray], compiled: bool):
        import torch

        self.name = "HF compile" if compiled else "HF eager"
        torch.manual_seed(0)
        self.model = _hf_model(arch, cfg).train()
        self.n_params = int(sum(p.numel() for p in self.model.parameters()))
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        self.targets = t["targets"].long().reshape(-1)
        self.weights = t["weights"].reshape(-1)
        if arch == "encdec":
            self.kwargs = {"input_ids": t["enc_inputs"].long(), "decoder_input_ids": t["inputs"].long()}
        else:
            self.kwargs = {"input_ids": t["inputs"].long()}
        if arch == "prefix_lm":  # 4-D boolean mask, True = may attend: causal OR key in the prefix
            T = t["inputs"].shape[1]
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
            self.kwargs["attention_mask"] = (causal[None] | t["prefix_mask"][:, None, :])[:, None]
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        opt = bench_optim()
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps, fused=True)
        self.clip = opt.clip_norm
        model, targets, weights, V = self.model, self.targets, self.weights, cfg.vocab_size

        def loss_fn(kwargs):
            logits = model(**kwargs).logits.float()
            losses = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets, reduction="none")
            return (losses * weights).sum() / weights.sum().clamp(min=1.0)

        self.loss_fn = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn
        self.compile_seconds = float("nan")
        self.last_loss = float("nan")
        if compiled:
            t0 = time.perf_counter()
            self.step()  # compiles forward and backward graphs
            self.compile_seconds = time.perf_counter() - t0

    def step(self) -> None:
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.kwargs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
        self.opt.step()
        self.last_loss = float(loss.detach())

    def close(self) -> None:
        self.model = self.opt = self.loss_fn = None


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


# ---- sections ------------------------------------------------------------------------------------
def measure_matmul_peak(plan: Plan, have_torch: bool) -> dict[str, Any]:
    """Dense f32 matmul FLOP/s of this machine: jnp (XLA) and torch, n x n @ n x n, alternating."""
    res: dict[str, Any] = {"rows": []}
    fns: dict[str, Callable[[int], Callable[[], None]]] = {}

    def jax_mm(n: int):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()
        return lambda: f(a, b).block_until_ready()

    fns["jax"] = jax_mm
    if have_torch:
        import torch

        def torch_mm(n: int):
            a, b = torch.randn(n, n), torch.randn(n, n)
            c = torch.empty(n, n)
            torch.mm(a, b, out=c)
            return lambda: torch.mm(a, b, out=c)

        fns["torch"] = torch_mm
    best = 0.0
    for n in plan.matmul_sizes:
        runners = {name: make(n) for name, make in fns.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(plan.matmul_reps):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            flops = 2.0 * n ** 3 / statistics.median(ts)
            best = max(best, flops)
            res["rows"].append({"lib": name, "n": n, "flops": flops, "all": [2.0 * n ** 3 / t for t in ts]})
            log(f"matmul peak: {name} n={n}: {flops / 1e9:.1f} GFLOP/s (median of {len(ts)})")
        del runners
    res["peak"] = best
    return res


def train_cell(arch: str, size: str, plan: Plan, have_torch: bool, torch_why: str, peak: float | None,
               rss: RSS) -> dict[str, Any]:
    B, T = plan.batch[size], plan.seq
    cfg = model_config(arch, size, plan.vocab, T)
    batch = make_batch(arch, B, T, plan.vocab, seed=1)
    label = f"train {arch} {size}"
    log(f"{label}: compiling archcmp step (B={B}, T={T})")
    ours = OursTrainer(cfg, batch)
    variants: list = [ours]
    missing: dict[str, str] = {}
    if have_torch and plan.torch:
        for compiled in (False, True):
            name = "HF compile" if compiled else "HF eager"
            try:
                if compiled:
                    log(f"{label}: torch.compile of the HF model (first step)")
                variants.append(HFTrainer(arch, cfg, batch, compiled))
            except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
                missing[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                log(f"{label}: {name} {missing[name]}")
    else:
        why = torch_why if plan.torch else "skipped (--no-torch)"
        missing = {"HF eager": why, "HF compile": why}
    for v in variants:  # warm-up: caches, allocator, lazy init (the compile variant already ran once)
        for _ in range(plan.warmup if v.name != "HF compile" else max(plan.warmup - 1, 0)):
            v.step()
    timings = alternate(variants, plan.rounds[size], plan.steps_per_round[size], rss, label)
    flops_step = B * train_flops_per_row(cfg, T, T if arch == "encdec" else 0)
    tokens_step = B * tokens_per_row(arch, T)
    row: dict[str, Any] = {
        "arch": arch, "size": size, "batch": B, "seq": T, "tokens_per_step": tokens_step, "flops_per_step": flops_step,
        "params_ours": ours.n_params, "params_ours_formula": count_params(cfg).total,
        "compile_ours": ours.compile_seconds, "xla_memory": ours.xla_memory, "hf_model": HF_MODEL[arch],
        "variants": {}, "missing": missing,
    }
    for v in variants:
        t = timings[v.name]
        med = statistics.median(t["times"])
        row["variants"][v.name] = {
            "step_seconds": med, "tokens_per_s": tokens_step / med, "flops_per_s": flops_step / med,
            "mfu": (flops_step / med / peak) if peak else None, "peak_rss_above": t["peak"],
            "n_params": v.n_params, "compile_seconds": v.compile_seconds, "times": t["times"],
            "final_loss": v.last_loss,
            "others_cpu": statistics.median(t["others"]) if t["others"] else None,
        }
    hf = [row["variants"][n]["tokens_per_s"] for n in ("HF eager", "HF compile") if n in row["variants"]]
    row["best_hf"] = max(hf) if hf else None
    row["ratio"] = row["variants"]["archcmp"]["tokens_per_s"] / row["best_hf"] if hf else None
    for v in variants:
        v.close()
    del variants, ours
    gc.collect()
    return row


def compile_cell(arch: str, n_layers: int, scan: bool, plan: Plan) -> dict[str, float]:
    """Lower + compile a fresh jit of our training step (no in-process cache hits)."""
    extra = dict(n_enc_layers=n_layers, n_dec_layers=n_layers) if arch == "encdec" else dict(n_layers=n_layers)
    cfg = model_config(arch, plan.compile_size, plan.vocab, plan.seq, scan_layers=scan, **extra)
    B = plan.batch[plan.compile_size]
    graphdef, params = nnx.split(build_model(cfg, seed=0))
    tx = make_optimizer(bench_optim(), total_steps=10_000)
    state = {"params": params, "opt_state": tx.init(params)}
    batch = jax.device_put(split_microbatches(make_batch(arch, B, plan.seq, plan.vocab), 1))
    step = make_train_step(graphdef, tx, accum=1)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, None)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"lower": t1 - t0, "compile": t2 - t1, "total": t2 - t0,
            "n_params": int(sum(x.size for x in jax.tree.leaves(params)))}


def compile_section(plan: Plan, warm: bool) -> dict[tuple[str, int, bool], dict]:
    if not warm and not plan.quick:  # untimed: the first compile of a process pays one-off initialisation
        compile_cell(plan.compile_archs[0], 1, True, Plan(archs=[], sizes=[], sections=[], compile_size="tiny",
                                                          seq=16, vocab=64))
    results: dict[tuple[str, int, bool], dict] = {}
    for rep in range(plan.compile_reps):
        for arch in plan.compile_archs:
            for L in plan.compile_layers:
                for scan in ((True, False) if (rep + L) % 2 == 0 else (False, True)):  # alternate order
                    r = compile_cell(arch, L, scan, plan)
                    cell = results.setdefault((arch, L, scan), {"totals": [], "lowers": [], "compiles": [],
                                                                "n_params": r["n_params"]})
                    cell["totals"].append(r["total"])
                    cell["lowers"].append(r["lower"])
                    cell["compiles"].append(r["compile"])
                    log(f"compile {arch} L={L} {'scan' if scan else 'loop'}: lower {r['lower']:.2f}s "
                        f"+ compile {r['compile']:.2f}s")
    for cell in results.values():
        cell.update(total=statistics.median(cell["totals"]), lower=statistics.median(cell["lowers"]),
                    compile=statistics.median(cell["compiles"]))
    return results


def _zero_eos(model) -> None:
    """Make EOS never the argmax (its tied embedding row is zero, so its logit is 0 while the best
    of the other tokens is positive): every decode then runs the full number of new tokens."""
    table = model.embed.table
    table[...] = table[...].at[vocab.EOS].set(0.0)


def decode_section(plan: Plan, rss: RSS) -> list[dict]:
    from archcmp.decode import DecodeConfig, run_lm

    rows = []
    P, N, B = plan.decode_prompt, plan.decode_new, plan.decode_batch
    rng = np.random.default_rng(2)
    prompts = [rng.integers(vocab.N_SPECIAL, plan.vocab, P).astype(np.int32) for _ in range(B)]
    for arch in [a for a in plan.archs if a in ("decoder", "prefix_lm", "encdec")]:
        cfg = model_config(arch, plan.decode_size, plan.vocab, max_len=P + N + 2)
        model = build_model(cfg, seed=0)
        _zero_eos(model)
        modes = {}
        for cached in (True, False):
            dcfg = DecodeConfig(strategy="greedy", max_new_tokens=N, use_cache=cached)
            t0 = time.perf_counter()
            out, steps = run_lm(model, prompts, dcfg)
            jax.block_until_ready(out)
            modes[cached] = {"dcfg": dcfg, "compile_and_first": time.perf_counter() - t0, "times": [],
                             "steps": int(steps), "tokens": np.asarray(out)}
        for r in range(plan.decode_rounds):
            for cached in ((True, False) if r % 2 == 0 else (False, True)):
                t0 = time.perf_counter()
                out, steps = run_lm(model, prompts, modes[cached]["dcfg"])
                jax.block_until_ready(out)
                modes[cached]["times"].append(time.perf_counter() - t0)
            log(f"decode {arch}: round {r + 1}/{plan.decode_rounds}: cached "
                f"{statistics.median(modes[True]['times']):.2f}s, uncached {statistics.median(modes[False]['times']):.2f}s")
        row = {"arch": arch, "size": plan.decode_size, "batch": B, "prompt": P, "new": N,
               "n_params": count_params(cfg).total,
               "same_tokens": bool(np.array_equal(modes[True]["tokens"], modes[False]["tokens"]))}
        for cached, m in modes.items():
            med = statistics.median(m["times"])
            row["cached" if cached else "uncached"] = {"seconds": med, "steps": m["steps"],
                                                       "tokens_per_s": B * m["steps"] / med,
                                                       "compile_and_first": m["compile_and_first"]}
        row["speedup"] = row["cached"]["tokens_per_s"] / row["uncached"]["tokens_per_s"]
        rows.append(row)
        del model
        gc.collect()
    return rows


# ---- report --------------------------------------------------------------------------------------
def _fmt_int(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _mb(x: int | None) -> str:
    return "—" if x is None else f"{x / 2**20:,.0f}"


def train_table(rows: list[dict]) -> list[str]:
    head = ("| arch | size | params ours / HF | ours tok/s | HF eager tok/s | HF compile tok/s | "
            "ours / best HF | MFU ours | peak mem MB ours / eager / compile | compile s ours / torch |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        v = r["variants"]

        def tok(name: str) -> str:
            if name in v:
                return _fmt_int(v[name]["tokens_per_s"])
            return r["missing"].get(name, "—")

        hf_params = next((v[n]["n_params"] for n in ("HF eager", "HF compile") if n in v), None)
        mem = " / ".join(_mb(v[n]["peak_rss_above"]) if n in v else "—" for n in ("archcmp", "HF eager", "HF compile"))
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        mfu = v["archcmp"]["mfu"]
        tc = v.get("HF compile", {}).get("compile_seconds")
        lines.append(
            f"| {r['arch']} | {r['size']} | {r['params_ours']:,} / {_fmt_int(hf_params)} | {tok('archcmp')} | "
            f"{tok('HF eager')} | {tok('HF compile')} | {ratio} | "
            f"{'—' if mfu is None else f'{100 * mfu:.1f}%'} | {mem} | "
            f"{r['compile_ours']:.1f} / {'—' if tc is None else f'{tc:.1f}'} |")
    return lines


def compile_table(results: dict, plan: Plan) -> list[str]:
    layers = plan.compile_layers
    head = "| arch | mode | " + " | ".join(f"L={L} (s)" for L in layers) + f" | {layers[-1]}/{layers[0]} |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for arch in plan.compile_archs:
        for scan in (True, False):
            cells = [results.get((arch, L, scan)) for L in layers]
            if any(c is None for c in cells):
                continue
            vals = " | ".join(f"{c['total']:.2f}" for c in cells)
            lines.append(f"| {arch} | {'scan' if scan else 'loop'} | {vals} | "
                         f"{cells[-1]['total'] / cells[0]['total']:.2f}× |")
    return lines


def decode_table(rows: list[dict]) -> list[str]:
    head = ("| arch | size | params | batch | new tokens | cached tok/s | uncached tok/s | cached / uncached | "
            "same tokens |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['size']} | {r['n_params']:,} | {r['batch']} | {r['cached']['steps']} | "
                     f"{r['cached']['tokens_per_s']:,.0f} | {r['uncached']['tokens_per_s']:,.1f} | "
                     f"{r['speedup']:.1f}× | {'yes' if r['same_tokens'] else 'NO'} |")
    return lines


def peak_table(res: dict) -> list[str]:
    lines = ["| library | n | GFLOP/s (median) | all repeats |", "|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['lib']} | {r['n']} | {r['flops'] / 1e9:.1f} | "
                     + ", ".join(f"{x / 1e9:.0f}" for x in r["all"]) + " |")
    return lines


def machine_lines(torch_info: str) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import flax
    import jaxlib
    import optax

    return [
        f"- CPU: {cpu}; os.cpu_count()={os.cpu_count()}, usable cores={n_cores()} (machine shared with other jobs)",
        f"- platform: {platform.platform()}, python {platform.python_version()}",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
        f"devices {jax.devices()}",
        f"- {torch_info}" + (f"; torch threads {_torch_threads()}" if torch_info.startswith("torch ") else ""),
    ]


def _torch_threads() -> str:
    import torch

    return f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op"


def write_report(path: Path | None, plan: Plan, results: dict, torch_info: str, command: str) -> str:
    """Markdown report; keeps hand-written notes below :data:`NOTES_MARKER` of an existing file."""
    la, lb = results["load_before"], results["load_after"]
    doc = [
        "# archcmp-bench",
        "",
        f"Command: `{command}` (wall time {results['wall']:.0f} s)",
        "",
        "Machine:",
        "",
        *machine_lines(torch_info),
        f"- load average (1/5/15 min) before: {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, "
        f"after: {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}",
        "",
    ]
    if "mfu" in results:
        doc += ["## Dense float32 matmul peak", "",
                "n×n @ n×n, alternating jnp (XLA) and torch; the best median is the MFU denominator.", "",
                *peak_table(results["mfu"]), "",
                f"**Peak: {results['mfu']['peak'] / 1e9:.1f} GFLOP/s.**", ""]
    if "train" in results:
        rows = results["train"]
        b = rows[0] if rows else None
        doc += ["## Training step: forward + backward + AdamW", "",
                (f"Synthetic batches of {b['batch']} rows × {b['seq']} tokens (encdec: {b['seq']} encoder + "
                 f"{b['seq']} decoder tokens per row, both counted in tokens/s), vocabulary {plan.vocab}, float32. "
                 if b else "") +
                "archcmp runs its real step (`steps.make_train_step`: loss, grads, global-norm clipping 1.0, "
                "AdamW with weight decay on matrices, finiteness guard) on the project optimizer. "
                "HF: the same shape in `transformers` (GPT-2 for decoder; GPT-2 with a 4-D boolean "
                "causal-or-prefix mask for prefix_lm; BERT MLM for encoder; T5 for encdec), sdpa attention, "
                "dropout 0, the same weighted cross-entropy over `weights`, `clip_grad_norm_` 1.0 and fused "
                "AdamW (decay on matrices); `HF compile` wraps forward + loss in `torch.compile` "
                "(backward compiled by AOTAutograd). Our models follow each HF model's style: GPT-2/BERT "
                "learned positions, LayerNorm (BERT post-norm), tanh-GELU; T5 relative bias, RMSNorm, ReLU. "
                "HF has biases in every linear layer (GPT-2, BERT) and BERT's MLM transform, so its "
                "parameter counts differ slightly.",
                "",
                "Medians over rounds of alternating variants (the order rotates every round; rounds × steps "
                "per round below). tokens/s = positions per step / "
                "median step time. MFU = our model FLOP/s (exact count of `accounting.train_flops_per_row`: "
                "every matmul, 3× forward) / the measured matmul peak. Peak memory = most the process's "
                "resident set grew above its level at the start of that variant's steps (VmHWM after "
                "malloc_trim and a high-water reset): activations, gradients and temporaries, not the "
                "resident weights and optimizer state. Compile: our lower + XLA compile; torch: the first "
                "`torch.compile`d step.", "",
                *train_table(rows), ""]
        detail = ["Rounds × steps per round: " + ", ".join(
            f"{s}: {plan.rounds[s]}×{plan.steps_per_round[s]}" for s in plan.sizes) + ".", ""]
        detail += ["| arch | size | variant | median step (s) | all steps (s) | loss after | XLA peak estimate MB "
                   "| other processes' CPU share |",
                   "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for name, v in r["variants"].items():
                xm = r["xla_memory"] if name == "archcmp" else None
                xla = "—" if xm is None else _mb(xm["arguments"] + xm["outputs"] - xm["aliased"] + xm["temps"])
                detail.append(f"| {r['arch']} | {r['size']} | {name} | {v['step_seconds']:.3f} | "
                              + ", ".join(f"{t:.2f}" for t in v["times"]) + f" | {v['final_loss']:.3f} | {xla} | "
                              + ("—" if v["others_cpu"] is None else f"{100 * v['others_cpu']:.0f}%") + " |")
        doc += detail + [""]
    if "compile" in results:
        doc += ["## Compile time of the training step", "",
                f"Lower + XLA compile of a fresh `jax.jit` of our training step, shape of size "
                f"{plan.compile_size} with the depth varied (encdec: layers per stack), "
                f"{'median of ' + str(plan.compile_reps) + ' repeats' if plan.compile_reps > 1 else 'one measurement'} "
                "per cell, scan and loop alternating. Target: 24 layers ≤ 1.5× 2 layers with scan.", "",
                *compile_table(results["compile"], plan), ""]
    if "decode" in results:
        doc += ["## Decoding with and without the KV cache", "",
                f"Greedy `decode.run_lm` (the jitted while-loop), batch {plan.decode_batch}, prompt "
                f"{plan.decode_prompt} tokens (+BOS/SEP), {plan.decode_new} new tokens (EOS disabled so every run "
                "generates all of them), alternating cached / uncached, compile excluded. Uncached recomputes the "
                "whole fixed-size buffer each step. Target: cached ≥ 5× uncached.", "",
                *decode_table(results["decode"]), ""]
    if "ensemble" in results:
        from archcmp.bench_ensemble import report

        doc += report(results["ensemble"], plan)
    text = "\n".join(doc)
    if path is None:
        return text
    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER):]
    if not notes:
        notes = NOTES_MARKER + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n" + notes)
    return text


# ---- entry point ---------------------------------------------------------------------------------
def build_plan(args: argparse.Namespace) -> Plan:
    sizes = args.sizes or (["tiny"] if args.quick else ["3M", "20M"])
    plan = Plan(archs=args.archs, sizes=sizes, sections=args.sections, torch=not args.no_torch, quick=args.quick)
    if args.quick:
        plan.seq, plan.vocab = 32, 128
        plan.rounds = {s: 2 for s in SHAPES}
        plan.steps_per_round = {s: 1 for s in SHAPES}
        plan.batch = {s: 2 for s in SHAPES}
        plan.compile_layers, plan.compile_size = [1, 2], "tiny"
        plan.decode_size, plan.decode_batch, plan.decode_new, plan.decode_prompt = "tiny", 2, 8, 4
        plan.decode_rounds = 1
        plan.warmup = 1
        plan.matmul_sizes, plan.matmul_reps = [256], 2
        plan.ensemble_size, plan.ensemble_batches, plan.ensemble_rounds, plan.ensemble_steps = "tiny", [2], 2, 1
    if args.rounds:
        plan.rounds = {s: args.rounds for s in SHAPES}
    if args.compile_layers:
        plan.compile_layers = args.compile_layers
    plan.compile_archs = args.compile_archs or [a for a in ("decoder", "encdec") if a in plan.archs] or plan.archs[:1]
    plan.ensemble_archs = [a for a in plan.ensemble_archs if a in plan.archs] or plan.archs[:1]
    if args.ensemble_k:
        plan.ensemble_k = args.ensemble_k
    return plan


def run(plan: Plan, out: Path | None, command: str = "archcmp-bench") -> dict[str, Any]:
    have_torch, torch_info = torch_status()
    if have_torch and plan.torch:
        import torch

        torch.set_num_threads(n_cores())
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel region
            torch.set_num_interop_threads(n_cores())
    elif not plan.torch:
        torch_info = "torch: skipped (--no-torch)"
    else:
        log(f"torch columns: {torch_info}")
    log(f"sections {plan.sections}, archs {plan.archs}, sizes {plan.sizes}; {torch_info}; "
        f"JAX devices {jax.devices()}, {n_cores()} cores")
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    t_start = time.perf_counter()
    rss = RSS()
    use_torch = have_torch and plan.torch
    peak = None
    if "mfu" in plan.sections or "train" in plan.sections:
        results["mfu"] = measure_matmul_peak(plan, use_torch)
        peak = results["mfu"]["peak"]
    if "train" in plan.sections:
        results["train"] = []
        for size in plan.sizes:
            for arch in plan.archs:
                results["train"].append(train_cell(arch, size, plan, have_torch, torch_info, peak, rss))
    if "compile" in plan.sections:
        results["compile"] = compile_section(plan, warm="train" in plan.sections)
    if "decode" in plan.sections:
        results["decode"] = decode_section(plan, rss)
    if "ensemble" in plan.sections:
        from archcmp.bench_ensemble import ensemble_section

        results["ensemble"] = ensemble_section(plan, rss)
    results["wall"] = time.perf_counter() - t_start
    results["load_after"] = os.getloadavg()
    text = write_report(out, plan, results, torch_info, command)
    print(text)
    if out is not None:
        log(f"wrote {out}")
    return results


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``archcmp-bench``)."""
    run_cli(argv)


def run_cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the chosen sections, print the tables, write the report; -> results."""
    p = argparse.ArgumentParser(prog="archcmp-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, few iterations (seconds; used by the tests)")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--sizes", nargs="+", choices=list(SHAPES), help="default: 3M 20M (tiny with --quick)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--out", default="experiments/results/bench.md", help="markdown report ('-' = print only)")
    p.add_argument("--no-torch", action="store_true", help="skip the Hugging Face / torch columns")
    p.add_argument("--rounds", type=int, help="alternating rounds per training cell (default by size)")
    p.add_argument("--compile-layers", nargs="+", type=int, help="depths for the compile section (default 2 12 24)")
    p.add_argument("--compile-archs", nargs="+", choices=ARCHS,
                   help="archs for the compile section (default: decoder and encdec of --archs; encoder and "
                        "prefix_lm compile the same stack as decoder with another mask)")
    p.add_argument("--ensemble-k", type=int, help="models in the ensemble section (default 8)")
    args = p.parse_args(argv)
    plan = build_plan(args)
    command = "archcmp-bench" + ("" if not (sys.argv[1:] if argv is None else argv)
                                 else " " + " ".join(sys.argv[1:] if argv is None else argv))
    out = None if args.out == "-" else Path(args.out)
    return run(plan, out, command)


if __name__ == "__main__":
    main()
