"""``bench.json``: the figures of an archcmp-bench run as plain records, beside ``bench.md``.

One record per training cell (``arch``, ``size``, ``ours_tok_s``, ``hf_best_tok_s``, ``ratio``,
``mfu``, ``peak_mem_ratio`` = our peak memory / HF eager's, and the raw per-variant figures), plus the
ensemble, decode and compile figures and the device and load the run saw. Sections that were not run
are absent; a later run of other sections keeps the records of the sections it did not run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax


def train_record(row: dict[str, Any]) -> dict[str, Any]:
    v = row["variants"]
    ours, eager = v["archcmp"], v.get("HF eager")
    mem_ratio = None
    if eager and eager["peak_rss_above"]:
        mem_ratio = ours["peak_rss_above"] / eager["peak_rss_above"]
    return {"arch": row["arch"], "size": row["size"], "batch": row["batch"], "seq": row["seq"],
            "ours_tok_s": ours["tokens_per_s"], "hf_best_tok_s": row["best_hf"], "ratio": row["ratio"],
            "mfu": ours["mfu"], "peak_mem_ratio": mem_ratio,
            "peak_mem_bytes": {n: x["peak_rss_above"] for n, x in v.items()},
            "tok_s": {n: x["tokens_per_s"] for n, x in v.items()},
            "step_seconds": {n: x["times"] for n, x in v.items()},
            "compile_seconds_ours": row["compile_ours"], "missing": row["missing"]}


def ensemble_record(row: dict[str, Any]) -> dict[str, Any]:
    return {"arch": row["arch"], "size": row["size"], "k": row["k"], "batch": row["batch"], "seq": row["seq"],
            "tok_s": {n: x["tokens_per_s"] for n, x in row["variants"].items()},
            "ratio": row["ratio"], "max_rel_loss_diff": row["max_rel_loss_diff"]}


def decode_record(row: dict[str, Any]) -> dict[str, Any]:
    return {"arch": row["arch"], "size": row["size"], "batch": row["batch"], "new": row["new"],
            "cached_tok_s": row["cached"]["tokens_per_s"], "uncached_tok_s": row["uncached"]["tokens_per_s"],
            "speedup": row["speedup"], "same_tokens": row["same_tokens"]}


def compile_records(results: dict) -> list[dict[str, Any]]:
    return [{"arch": arch, "layers": L, "scan": scan, **times} for (arch, L, scan), times in results.items()]


def write_json(path: Path, results: dict[str, Any], command: str) -> dict[str, Any]:
    """Write (or update section by section) ``path``; -> the written document."""
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            doc = {}
    doc.update({"command": command, "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
                "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                "load_before": list(results["load_before"]), "load_after": list(results["load_after"])})
    if "mfu" in results:
        doc["matmul_peak_flops"] = results["mfu"]["peak"]
    if "train" in results:
        doc["train"] = [train_record(r) for r in results["train"]]
    if "ensemble" in results:
        doc["ensemble"] = [ensemble_record(r) for r in results["ensemble"]]
    if "decode" in results:
        doc["decode"] = [decode_record(r) for r in results["decode"]]
    if "compile" in results:
        doc["compile"] = compile_records(results["compile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return doc
