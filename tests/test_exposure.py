"""C06 evidence: the emergence ladder's teacher-forced vs free-running accuracy, reshaped per seed."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from archcmp.analysis.seeds import cli as seed_tables
from archcmp.analysis.seeds.exposure import SOURCE, exposure_seed_table, gap_summary
from archcmp.claims.registry import load_registry
from archcmp.claims.rules import evaluate

REPO = Path(__file__).resolve().parents[1]


def _metrics(gaps: dict[str, list[float]], tf: float = 0.9) -> pd.DataFrame:
    """An emergence-style metrics.csv: per (size, seed) an early and a final step; the final step's
    teacher-forced accuracy is ``tf`` and free-running is ``tf - gap``; the early step is junk that
    must be ignored; an encoder run of the same size must be ignored too."""
    rows = []
    for size, per_seed in gaps.items():
        for seed, gap in enumerate(per_seed):
            for arch in ("decoder", "encoder"):
                run = f"{arch}-{size}-s{seed}"
                for step, (a, b) in ((500, (0.1, 0.0)), (3000, (tf, tf - gap))):
                    for metric, v in (("tf_token_accuracy", a), ("token_accuracy", b), ("exact_match", 0.5)):
                        rows.append({"step": step, "seed": seed, "params": 1, "size": size, "arch": arch,
                                     "run": run, "metric": metric, "mean": v if arch == "decoder" else 0.0,
                                     "lo": 0, "hi": 1, "n": 512})
    return pd.DataFrame(rows)


def test_table_takes_the_final_step_of_the_decoder_runs_paired_by_seed():
    gaps = {"nano": [0.01, 0.02, 0.03], "micro": [0.0, 0.0, 0.0], "tiny": [0.1, 0.2, 0.3]}
    t = exposure_seed_table(_metrics(gaps))
    assert len(t) == 3 * 3 * 2
    assert set(t["metric"]) == {"token_accuracy"}
    row = t[(t["condition"] == "tiny") & (t["group"] == "decoder/free_running") & (t["seed"] == 2)]
    assert row["value"].item() == pytest.approx(0.9 - 0.3)
    tf = t[t["group"] == "decoder/teacher_forced"]["value"]
    assert (tf == 0.9).all()  # never the step-500 value 0.1, never the encoder's 0.0


def test_gap_interval_is_the_t_interval_over_seeds():
    t = exposure_seed_table(_metrics({"nano": [0.01, 0.02, 0.03], "micro": [0.0] * 3, "tiny": [0.05] * 3}))
    s = gap_summary(t).set_index("size")
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # sd of (0.01, 0.02, 0.03) is 0.01
    assert s.loc["nano", "gap"] == pytest.approx(0.02)
    assert s.loc["nano", "gap_lo"] == pytest.approx(0.02 - half)
    assert s.loc["nano", "gap_hi"] == pytest.approx(0.02 + half)
    assert s.loc["nano", "n_seeds"] == 3


def test_missing_size_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"\['tiny'\]"):
        exposure_seed_table(_metrics({"nano": [0.0] * 3, "micro": [0.0] * 3}))


@pytest.mark.parametrize("gaps, verdict", [
    ({"nano": [0.001, 0.002, 0.0], "micro": [0.0, 0.001, 0.002], "tiny": [0.1, 0.2, 0.3]}, "supported"),
    ({"nano": [0.10, 0.11, 0.12], "micro": [0.20, 0.21, 0.22], "tiny": [0.0, 0.0, 0.001]}, "refuted"),
    ({"nano": [0.0, 0.05, -0.05], "micro": [0.0, 0.06, -0.04], "tiny": [0.0, 0.0, 0.001]}, "inconclusive"),
])
def test_registry_rule_c06_reads_the_exported_table(tmp_path, gaps, verdict):
    """End to end: constructed ladder metrics -> `archcmp-analyze seeds` exporter -> C06's verdict."""
    (tmp_path / "experiments" / "results" / SOURCE).parent.mkdir(parents=True)
    _metrics(gaps).to_csv(tmp_path / "experiments" / "results" / SOURCE, index=False)
    paths = seed_tables.export_all(tmp_path / "experiments" / "results")
    assert tmp_path / "experiments" / "results" / "exposure" / "seeds.csv" in paths
    assert (tmp_path / "experiments" / "results" / "exposure" / "gap.png").stat().st_size > 0
    c06 = next(c for c in load_registry(REPO / "seeds" / "claims.yaml") if c.id == "C06")
    assert evaluate(c06, tmp_path).verdict == verdict
