"""bench.json records (archcmp.bench.records) from hand-made section results: the ratios are the
figures divided as the issue defines them, and a run of one section keeps the other sections' records."""
import json

import pytest

from archcmp.bench.records import write_json


def _train_row():
    def v(tok, mem):
        return {"tokens_per_s": tok, "peak_rss_above": mem, "times": [1.0], "mfu": 0.3}
    return {"arch": "decoder", "size": "3M", "batch": 8, "seq": 256, "best_hf": 4000.0, "ratio": 0.75,
            "compile_ours": 5.0, "missing": {},
            "variants": {"archcmp": v(3000.0, 300), "HF eager": v(3500.0, 250), "HF compile": v(4000.0, 200)}}


def test_train_and_ensemble_records_then_partial_update(tmp_path):
    path = tmp_path / "bench.json"
    ens = {"arch": "decoder", "size": "nano", "k": 8, "batch": 4, "seq": 32, "ratio": 1.5, "max_rel_loss_diff": 0.0,
           "variants": {"vmap k=8": {"tokens_per_s": 30.0}, "sequential k=8": {"tokens_per_s": 20.0}}}
    write_json(path, {"load_before": (1, 1, 1), "load_after": (2, 2, 2), "mfu": {"peak": 1e11},
                      "train": [_train_row()], "ensemble": [ens]}, "archcmp-bench")
    doc = json.loads(path.read_text())
    (rec,) = doc["train"]
    assert (rec["arch"], rec["size"], rec["ours_tok_s"], rec["hf_best_tok_s"]) == ("decoder", "3M", 3000.0, 4000.0)
    assert rec["ratio"] == 0.75 and rec["mfu"] == 0.3
    assert rec["peak_mem_ratio"] == pytest.approx(300 / 250)  # ours / HF eager, not / compile
    assert doc["ensemble"][0]["ratio"] == 1.5 and doc["ensemble"][0]["tok_s"]["vmap k=8"] == 30.0
    decode = {"arch": "decoder", "size": "3M", "batch": 4, "new": 256, "same_tokens": True, "speedup": 10.0,
              "cached": {"tokens_per_s": 100.0}, "uncached": {"tokens_per_s": 10.0}}
    write_json(path, {"load_before": (1, 1, 1), "load_after": (1, 1, 1), "decode": [decode]}, "archcmp-bench --sections decode")
    doc = json.loads(path.read_text())
    assert doc["decode"][0]["speedup"] == 10.0
    assert doc["train"][0]["ours_tok_s"] == 3000.0  # the train records of the earlier run are kept
    assert doc["command"] == "archcmp-bench --sections decode"
