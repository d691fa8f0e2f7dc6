"""The claims verdict engine on constructed evidence, the registry, and the committed CLAIMS.md."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from scipy import stats

from archcmp.claims import cli
from archcmp.claims.evidence import EvidenceError, mean_interval
from archcmp.claims.registry import RegistryError, load_registry, validate
from archcmp.claims.report import render_markdown
from archcmp.claims.rules import apply_rule, evaluate

REPO = Path(__file__).resolve().parents[1]


def seed_table(path: Path, rows):
    """rows: (condition, group, seed, value) with metric 'loss'."""
    lines = ["condition,group,seed,metric,value"] + [f"{c},{g},{s},loss,{v!r}" for c, g, s, v in rows]
    path.write_text("\n".join(lines) + "\n")
    return path.name


def diff_rows(diffs_by_cond, base=2.0):
    """Group a = base + diff, group b = base, per condition and seed."""
    rows = []
    for cond, diffs in diffs_by_cond.items():
        for s, d in enumerate(diffs):
            rows += [(cond, "a", s, base + d), (cond, "b", s, base)]
    return rows


def rule(table, **kw):
    return {"kind": "seed_difference", "table": table, "metric": "loss", "a": "a", "b": "b",
            "direction": "greater", "min_conditions": 2, **kw}


# ----------------------------------------------------------------------------- seed_difference
def test_clear_support_with_independent_t_interval(tmp_path):
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [1.0, 1.1, 0.9], "x2": [0.5, 0.6, 0.7]}))
    out = apply_rule(rule(t), tmp_path)
    assert out.verdict == "supported" and out.n_seeds == 3
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)  # sd of (1.0, 1.1, 0.9) is 0.1
    assert f"x1: a − b = +1 [+{1 - half:.4g}, +{1 + half:.4g}] (n=3)" in out.evidence


def test_clear_refutation(tmp_path):
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [-1.0, -1.1, -0.9], "x2": [-0.5, -0.6, -0.7]}))
    assert apply_rule(rule(t), tmp_path).verdict == "refuted"
    # the same data read as a claim that a is *less* than b is supported
    assert apply_rule(rule(t, direction="less"), tmp_path).verdict == "supported"


def test_overlapping_interval_is_inconclusive(tmp_path):
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [1.0, -1.0, 0.5], "x2": [0.5, 0.6, 0.7]}))
    out = apply_rule(rule(t), tmp_path)
    assert out.verdict == "inconclusive"
    assert "1 of 2 conditions for, 0 against, need 2" in out.reason


def test_single_seed_is_never_decisive(tmp_path):
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [5.0], "x2": [7.0]}))
    out = apply_rule(rule(t), tmp_path)
    assert out.verdict == "inconclusive" and out.n_seeds == 1
    assert out.reason.startswith("n_seeds=1 < 3")


def test_two_clear_seeds_are_still_not_enough(tmp_path):
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [1.0, 1.01], "x2": [1.0, 1.01]}))
    out = apply_rule(rule(t), tmp_path)
    assert out.verdict == "inconclusive" and out.reason.startswith("n_seeds=2 < 3 (would be supported)")


def test_refutation_needs_the_favoured_arm_to_have_learned(tmp_path):
    # both arms tie at every condition: a clear refutation of "a > b by 0.05" ...
    tie = {"x1": [0.0, 0.001, -0.001], "x2": [0.0, 0.002, -0.002]}
    failed = seed_table(tmp_path / "failed.csv", diff_rows(tie, base=0.01))
    assert apply_rule(rule(failed, min_effect=0.05), tmp_path).verdict == "refuted"
    # ... unless a never learned (mean 0.01 < 0.5): then no condition votes against
    out = apply_rule(rule(failed, min_effect=0.05, refute_needs_a_mean=0.5), tmp_path)
    assert out.verdict == "inconclusive" and "0 against" in out.reason
    assert "did not learn (mean < 0.5) at x1, x2" in out.reason
    # a tie between two arms that both learned still refutes
    learned = seed_table(tmp_path / "learned.csv", diff_rows(tie, base=0.9))
    assert apply_rule(rule(learned, min_effect=0.05, refute_needs_a_mean=0.5), tmp_path).verdict == "refuted"
    # a clear gain still counts for even where a is below the bar
    gain = seed_table(tmp_path / "gain.csv", diff_rows({"x1": [0.3, 0.31, 0.29], "x2": [0.2, 0.21, 0.19]}, base=0.0))
    assert apply_rule(rule(gain, min_effect=0.05, refute_needs_a_mean=0.5), tmp_path).verdict == "supported"


def test_missing_evidence_is_not_run(tmp_path):
    out = apply_rule(rule("nowhere/seeds.csv"), tmp_path)
    assert out.verdict == "not run" and "nowhere/seeds.csv" in out.reason
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [1.0, 1.1, 0.9]}))
    assert apply_rule(rule(t, metric="other"), tmp_path).verdict == "not run"


def test_equal_direction_and_min_effect(tmp_path):
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [0.001, -0.001, 0.0], "x2": [0.002, 0.0, 0.001]}))
    assert apply_rule(rule(t, direction="equal", margin=0.02), tmp_path).verdict == "supported"
    t2 = seed_table(tmp_path / "s2.csv", diff_rows({"x1": [0.5, 0.6, 0.7], "x2": [0.5, 0.6, 0.7]}))
    assert apply_rule(rule(t2, direction="equal", margin=0.02), tmp_path).verdict == "refuted"
    # a confidently positive effect smaller than the minimum effect of interest refutes
    t3 = seed_table(tmp_path / "s3.csv", diff_rows({"x1": [0.01, 0.011, 0.012], "x2": [0.01, 0.011, 0.012]}))
    assert apply_rule(rule(t3, min_effect=0.05), tmp_path).verdict == "refuted"


def test_one_sample_and_unpaired(tmp_path):
    rows = [(c, "a", s, v) for c in ("x1", "x2") for s, v in enumerate([0.3, 0.31, 0.29])]
    t = seed_table(tmp_path / "s.csv", rows)
    r = rule(t)
    del r["b"]
    assert apply_rule(r, tmp_path).verdict == "supported"
    t2 = seed_table(tmp_path / "u.csv", diff_rows({"x1": [1.0, 1.1, 0.9], "x2": [1.0, 1.1, 0.9]}))
    assert apply_rule(rule(t2, paired=False), tmp_path).verdict == "supported"


def test_bootstrap_interval_is_deterministic():
    a = mean_interval([1.0, 2.0, 4.0, 3.0], method="bootstrap")
    assert a == mean_interval([1.0, 2.0, 4.0, 3.0], method="bootstrap")
    assert 1.0 <= a[1] < 2.5 < a[2] <= 4.0


# ----------------------------------------------------------------------------- other kinds
def criterion(tmp_path, **kw):
    (tmp_path / "criterion.json").write_text(json.dumps({"criterion": "jump", "met": True, "n_seeds": 3, **kw}))
    return {"kind": "criterion", "path": "criterion.json", "on_met": "supported", "on_not_met": "refuted"}


def test_criterion_rule(tmp_path):
    r = criterion(tmp_path, delay=7.5)
    out = apply_rule(r, tmp_path)
    assert out.verdict == "supported" and "delay=7.5" in out.evidence[-1]
    criterion(tmp_path, met=False)
    assert apply_rule(r, tmp_path).verdict == "refuted"
    criterion(tmp_path, n_seeds=1)
    assert apply_rule(r, tmp_path).verdict == "inconclusive"
    (tmp_path / "criterion.json").write_text(json.dumps({"criterion": "jump", "met": "yes", "n_seeds": 3}))
    with pytest.raises(EvidenceError, match="met = 'yes'"):
        apply_rule(r, tmp_path)
    criterion(tmp_path, met=None, status="partial: 2 of 5 sizes")  # pre-registered, still running
    out = apply_rule(r, tmp_path)
    assert out.verdict == "not run" and "partial: 2 of 5 sizes" in out.reason
    (tmp_path / "criterion.json").write_text(json.dumps({"criterion": "jump", "met": None, "n_seeds": 3}))
    with pytest.raises(EvidenceError, match="met = None"):  # null needs a status saying why
        apply_rule(r, tmp_path)
    (tmp_path / "criterion.json").unlink()
    assert apply_rule(r, tmp_path).verdict == "not run"


def test_criterion_whose_prerequisite_failed_is_not_judged(tmp_path):
    r = criterion(tmp_path, met=False, prerequisite_met=True)  # judged and not met: the rule's on_not_met
    assert apply_rule(r, tmp_path).verdict == "refuted"
    criterion(tmp_path, met=False, prerequisite_met=False, prerequisite="largest size >= 0.9")
    out = apply_rule(r, tmp_path)  # not judged: inconclusive whatever on_not_met says
    assert out.verdict == "inconclusive" and out.reason == "prerequisite not met (not judged)"
    assert "largest size >= 0.9" in out.evidence[-1]
    criterion(tmp_path, met=False, prerequisite_met=False, n_seeds=1)  # the seed guard adds its reason
    out = apply_rule(r, tmp_path)
    assert out.verdict == "inconclusive" and "n_seeds=1 < 3" in out.reason
    criterion(tmp_path, met=True, prerequisite_met=False)  # contradictory
    with pytest.raises(EvidenceError, match="met = True with prerequisite_met = false"):
        apply_rule(r, tmp_path)
    criterion(tmp_path, met=False, prerequisite_met="no")
    with pytest.raises(EvidenceError, match="prerequisite_met = 'no'"):
        apply_rule(r, tmp_path)
    # inside an ``all`` rule a not-judged criterion cannot refute the claim
    parts = {"kind": "all", "parts": [criterion(tmp_path, met=False, prerequisite_met=False)]}
    assert apply_rule(parts, tmp_path).verdict == "inconclusive"


def fits(tmp_path, rows):
    head = "fit,group,parameter,estimate,lo,hi,n_seeds,interval,n_points,flags"
    (tmp_path / "fits.csv").write_text("\n".join([head] + rows) + "\n")
    return {"kind": "fit_comparison", "table": "fits.csv", "fit": "L(C)", "parameter": "gamma",
            "a": "decoder", "b": "encdec", "direction": "greater"}


def test_fit_comparison(tmp_path):
    r = fits(tmp_path, ["L(C),decoder,gamma,0.3,0.28,0.32,3,t,6,", "L(C),encdec,gamma,0.2,0.18,0.22,3,t,6,"])
    assert apply_rule(r, tmp_path).verdict == "supported"
    fits(tmp_path, ["L(C),decoder,gamma,0.3,0.1,0.8,3,t,6,", "L(C),encdec,gamma,0.2,0.1,0.9,3,t,6,"])
    out = apply_rule(r, tmp_path)
    assert out.verdict == "inconclusive" and "intervals overlap" in out.reason
    fits(tmp_path, ["L(C),decoder,gamma,0.3,0.28,0.32,3,t,6,flat: fitted curve falls by 0.1%",
                    "L(C),encdec,gamma,0.2,0.18,0.22,3,t,6,"])
    out = apply_rule(r, tmp_path)
    assert out.verdict == "inconclusive" and "decoder: flat" in out.reason
    fits(tmp_path, ["L(C),decoder,gamma,0.1,0.08,0.12,3,t,6,", "L(C),encdec,gamma,0.2,0.18,0.22,3,t,6,"])
    assert apply_rule(r, tmp_path).verdict == "refuted"
    fits(tmp_path, ["L(C),decoder,gamma,0.1,0.08,0.12,3,t,6,"])
    assert apply_rule(r, tmp_path).verdict == "not run"


def test_holdout_prediction(tmp_path):
    head = "group,x_heldout,observed,predicted,lo,hi,n_seeds,n_fit_points,flags"
    (tmp_path / "p.csv").write_text("\n".join([head, "a,1e12,2.0,2.01,1.9,2.1,3,5,", "b,1e12,2.0,2.5,2.4,2.6,3,5,",
                                              "c,1e12,2.0,2.0,1.9,2.1,3,3,too few points: 3 for 3 parameters"]) + "\n")
    r = {"kind": "holdout_prediction", "table": "p.csv", "groups": ["a", "b", "c"], "min_groups": 2}
    out = apply_rule(r, tmp_path)
    assert out.verdict == "inconclusive" and "1 of 3 groups inside, 1 outside" in out.reason
    assert apply_rule({**r, "min_groups": 1}, tmp_path).verdict == "supported"


def test_all_combines_parts(tmp_path):
    t = seed_table(tmp_path / "s.csv", diff_rows({"x1": [1.0, 1.1, 0.9], "x2": [0.5, 0.6, 0.7]}))
    good, missing = rule(t), rule("missing.csv")
    assert apply_rule({"kind": "all", "parts": [good, good]}, tmp_path).verdict == "supported"
    assert apply_rule({"kind": "all", "parts": [good, missing]}, tmp_path).verdict == "inconclusive"
    assert apply_rule({"kind": "all", "parts": [missing, missing]}, tmp_path).verdict == "not run"
    assert apply_rule({"kind": "all", "parts": [good, rule(t, direction="less")]}, tmp_path).verdict == "refuted"


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_seed_claim_with_a_dated_rule():
    claims = load_registry(REPO / "seeds" / "claims.yaml")
    assert [c.id for c in claims] == [f"C{i:02d}" for i in range(1, 45)]
    for c in claims:
        if c.testable:
            assert c.rule["kind"] and c.rule_written == "2026-12-03" and c.rule["prose"].strip(), c.id
        else:
            assert c.reason and not c.rule, c.id
            assert evaluate(c, REPO).verdict == "not testable"


def test_registry_figures_exist():
    for c in load_registry(REPO / "seeds" / "claims.yaml"):
        for f in c.figures:
            assert (REPO / "experiments" / "results" / f).is_file(), (c.id, f)


def minimal(**claim):
    base = {"id": "C01", "sources": ["000"], "claim": "A claim stated in our words.", "testable": True,
            "experiments": ["x"], "metrics": ["m"],
            "rule": {"rule_written": "2026-12-03", "prose": "Supported if ...", **rule("t.csv")}}
    return {"claims": [{**base, **claim}]}


@pytest.mark.parametrize("change, message", [
    ({"testable": True, "rule": None}, "C01.rule = None: a testable claim needs a decision rule"),
    ({"rule": {"prose": "p", **rule("t.csv")}}, "C01.rule.rule_written = None"),
    ({"rule": {"rule_written": "2026-12-03", "prose": "p", **rule("t.csv", direction="up")}},
     "C01.rule.direction = 'up': must be one of equal, greater, less"),
    ({"rule": {"rule_written": "2026-12-03", "prose": "p", **rule("t.csv", refute_needs_a_mean="x")}},
     "C01.rule.refute_needs_a_mean = 'x': must be a finite number"),
    ({"testable": False, "rule": None}, "C01.reason = '': an untestable claim must say why"),
    ({"sources": ["007"]}, "C01.sources = ['007']"),
    ({"colour": 1}, "C01.colour = 1: unknown key"),
    ({"rule": {"rule_written": "2026-12-03", "prose": "p", "amended": [{"date": "2026-12-02", "change": "c"}],
               **rule("t.csv")}}, "C01.rule.amended[0].date = '2026-12-02': is before rule_written 2026-12-03"),
    ({"rule": {"rule_written": "2026-12-03", "prose": "p", "amended": [{"date": "2026-12-04"}], **rule("t.csv")}},
     "C01.rule.amended[0] = {'date': '2026-12-04'}: must be a mapping with exactly the keys date and change"),
])
def test_registry_errors_are_one_line_naming_key_and_value(change, message):
    data = minimal(**change)
    if data["claims"][0].get("rule") is None:
        data["claims"][0].pop("rule")
    with pytest.raises(RegistryError) as exc:
        validate(data)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_registry_amendment_keeps_the_original_prose_and_shows_both(tmp_path):
    data = minimal(rule={"rule_written": "2026-12-03", "prose": "Original: not met refutes.",
                         "amended": [{"date": "2026-12-04", "change": "Not judged is  inconclusive."}],
                         **rule("t.csv")})
    (c,) = validate(data)
    assert c.rule["prose"] == "Original: not met refutes." and c.rule_written == "2026-12-03"
    assert c.rule["amended"] == [{"date": "2026-12-04", "change": "Not judged is inconclusive."}]
    md = render_markdown([c], {"C01": evaluate(c, tmp_path)}, root=tmp_path, results_dir=tmp_path / "results")
    assert ("Original: not met refutes. **Amended 2026-12-04:** Not judged is inconclusive." in md)


def test_registry_rejects_duplicate_and_missing_ids():
    data = minimal()
    data["claims"].append(dict(data["claims"][0]))
    with pytest.raises(RegistryError, match="duplicate id"):
        validate(data)
    data["claims"][1] = {**data["claims"][0], "id": "C03"}
    with pytest.raises(RegistryError, match="position 2 is 'C03', expected 'C02'"):
        validate(data)


# ----------------------------------------------------------------------------- committed output
def test_committed_claims_files_are_up_to_date(capsys):
    assert cli.main(["--check", "--root", str(REPO)]) == 0, capsys.readouterr().out


def test_malformed_evidence_exits_2_with_one_line(tmp_path, capsys):
    for rel in ("seeds", "experiments/results"):
        shutil.copytree(REPO / rel, tmp_path / rel)
    (tmp_path / "experiments/results/rank/seeds.csv").write_text("condition,group,seed,value\nnano,a,0,1\n")
    assert cli.main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rank/seeds.csv: missing column 'metric'" in err


def test_check_reports_a_stale_file_in_one_line(tmp_path, capsys):
    for rel in ("seeds", "experiments/results"):
        shutil.copytree(REPO / rel, tmp_path / rel)
    assert cli.main(["--root", str(tmp_path)]) == 0
    first = (tmp_path / "experiments/results/CLAIMS.md").read_text()
    assert cli.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "experiments/results/CLAIMS.md").read_text() == first  # byte-identical rerun
    csv_path = tmp_path / "experiments/results/claims.csv"
    csv_path.write_text(csv_path.read_text().replace("C01,not testable", "C01,supported"))
    capsys.readouterr()
    assert cli.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and "claims.csv: C01 supported -> not testable" in out


# ----------------------------------------------------------------------------- exporters
def test_uniform_causal_reference_matches_closed_form():
    from archcmp.analysis.seeds.cli import uniform_causal_erank
    # A = [[1, 0], [1/2, 1/2]]: A^T A has trace 3/2 and determinant 1/4
    lam = [(1.5 + s * math.sqrt(1.5 ** 2 - 1)) / 2 for s in (1, -1)]
    sv = [math.sqrt(v) for v in lam]
    p = [v / sum(sv) for v in sv]
    assert uniform_causal_erank(2) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-12)
    assert uniform_causal_erank(1) == pytest.approx(1.0)


def test_committed_rank_and_emergence_seed_tables_regenerate(tmp_path):
    """The per-seed tables the verdicts read are what the exporter makes of the committed CSVs."""
    from archcmp.analysis.seeds import cli as seed_tables
    folders = {"rank": "rank", "emergence": "emergence/issue6_500steps"}  # the single-seed issue-6 sweep
    for name, folder in folders.items():
        src = REPO / "experiments" / "results" / folder
        dst = tmp_path / name
        dst.mkdir()
        for f in ("runs.csv", "metrics.csv.gz", "metrics.csv", "pl_check.csv"):
            if (src / f).exists():
                shutil.copy(src / f, dst / f)
    seed_tables.export_rank(tmp_path / "rank")
    seed_tables.export_emergence(tmp_path / "emergence")
    for name, folder in folders.items():
        got = (tmp_path / name / "seeds.csv").read_text()
        assert got == (REPO / "experiments" / "results" / folder / "seeds.csv").read_text(), name
    rank = (tmp_path / "rank" / "seeds.csv").read_text()
    assert "nano,decoder/self,0,effective_rank_rel_causal," in rank
    assert "micro/decoder,h1,0,eval_loss,2.23793" in rank  # rank/runs.csv: 2.2379316090052925
    assert "nano,prefix_lm/prefix,2,effective_rank_rel_causal," in rank  # three seeds


def test_fit_table_fits_each_seed_when_there_are_three():
    """Three seeds of a ladder with L = 2 + 50 N^-0.3 (D = 20 N, C = 120 N^2, so gamma = 0.15):
    one fit per seed, a t-interval over seeds that covers the truth, no flags."""
    import numpy as np
    import pandas as pd

    from archcmp.analysis.seeds import cli as seed_tables
    from archcmp.analysis.scaling.cli import round_sig

    N = np.geomspace(1e4, 1e7, 7)
    rows = []
    for seed, wiggle in enumerate((1.0, 1.01, 0.99)):
        for n in N:
            rows.append({"arch": "decoder", "seed": seed, "N": n, "D": 20 * n, "C": 120 * n * n,
                         "eval_loss": 2.0 + 50.0 * wiggle * n ** -0.3})
    d = pd.DataFrame(rows)
    d["budget"] = round_sig(d["C"].to_numpy())
    t = seed_tables.fit_table(d).set_index("parameter")
    for param, truth in (("alpha_N", 0.3), ("gamma", 0.15)):
        r = t.loc[param]
        assert r["n_seeds"] == 3 and r["interval"] == "t over seeds" and r["flags"] == "", r.to_dict()
        assert r["lo"] <= truth <= r["hi"] and abs(r["estimate"] - truth) < 0.01


def _ladder_frame(shift_top: float = 0.0):
    """Three seeds of a 7-size ladder, L = 2 + 50 N^-0.3 with D = 20 N, C = 120 N^2, each point
    scaled by a fixed +-0.5% wiggle; the largest size's loss moved by ``shift_top``."""
    import numpy as np
    import pandas as pd

    N = np.geomspace(1e4, 1e7, 7)
    wiggles = np.random.default_rng(0).uniform(-0.005, 0.005, size=(3, len(N)))
    rows = []
    for seed in range(3):
        for i, n in enumerate(N):
            loss = (2.0 + 50.0 * n ** -0.3) * (1 + wiggles[seed, i]) + (shift_top if i == len(N) - 1 else 0.0)
            rows.append({"arch": "decoder", "seed": seed, "N": n, "D": 20 * n, "C": 120 * n * n, "eval_loss": loss})
    return pd.DataFrame(rows)


def test_ladder_holdout_puts_a_true_power_law_inside_and_a_shifted_top_outside():
    """C21 on the ladder: each seed's L(C) fit on the six smaller sizes predicts the seventh. A
    point on the curve lies inside the paired interval over seeds; the same point 0.3 nats higher
    lies above it, and the rule engine turns the two into inside/outside votes."""
    from archcmp.analysis.seeds import cli as seed_tables

    on = seed_tables.ladder_extrapolation_table(_ladder_frame()).iloc[0]
    truth = 2.0 + 50.0 * 1e7 ** -0.3  # 2.3152...
    assert on["n_seeds"] == 3 and on["n_fit_points"] == 6 and on["flags"] == "", on.to_dict()
    assert on["x_heldout"] == pytest.approx(120 * 1e14)
    assert on["lo"] <= on["observed"] <= on["hi"]
    assert abs(on["predicted"] - truth) < 0.02 and on["hi"] - on["lo"] < 0.1
    off = seed_tables.ladder_extrapolation_table(_ladder_frame(shift_top=0.3)).iloc[0]
    assert off["observed"] == pytest.approx(on["observed"] + 0.3)
    assert off["predicted"] == pytest.approx(on["predicted"])  # the held-out size is not fitted
    assert off["observed"] > off["hi"]


def _ladder_tables(arch: str, exact: dict[str, list[float]]) -> tuple:
    """Probe tables (metrics.csv, pl_check.csv) of one architecture's ladder: exact match per size
    and seed as given, per-token accuracy its fourth root (4-token answers)."""
    import pandas as pd

    params = {"femto": 7712, "pico": 27712, "nano": 60000, "micro": 203392, "tiny": 800000}
    rows, pl = [], []
    for size, values in exact.items():
        for seed, v in enumerate(values):
            run = f"{arch}-{size}-add3r-s{seed}"
            keys = {"step": 3000, "seed": seed, "params": params[size], "size": size, "arch": arch, "run": run}
            for metric, m in (("exact_match", v), ("token_accuracy", v ** 0.25),
                              ("edit_distance", 4 * (1 - v ** 0.25)), ("target_loglik", 4 * math.log(v ** 0.25))):
                rows.append({**keys, "metric": metric, "mean": m})
            pl.append({**keys, "observed": v, "predicted_positional": v})
    return pd.DataFrame(rows), pd.DataFrame(pl)


@pytest.mark.parametrize("shift, verdict", [(0.2, "supported"), (-0.2, "refuted"), (0.0, "inconclusive")])
def test_c41_reads_the_combined_four_arch_ladder_table(tmp_path, shift, verdict):
    """Decoder ladder in emergence/ladder3000/, encoder ladder in ladder3000_archs/encoder/: the
    exporter joins them and C41 (decoder minus encoder exact match per size) votes as constructed."""
    from archcmp.analysis.seeds import cli as seed_tables

    res = tmp_path / "experiments" / "results"
    enc_exact = {s: [0.3 + 0.1 * i + 0.01 * k for k in range(3)] for i, s in enumerate(("femto", "pico", "nano", "micro", "tiny"))}
    jitter = (0.01, -0.01, 0.0) if shift == 0.0 else (0.0, 0.01, 0.02)
    dec_exact = {s: [v + shift + j for v, j in zip(vals, jitter)] for s, vals in enc_exact.items()}
    for arch, exact, folder in (("decoder", dec_exact, "ladder3000"), ("encoder", enc_exact, "ladder3000_archs/encoder")):
        (res / "emergence" / folder).mkdir(parents=True)
        m, pl = _ladder_tables(arch, exact)
        m.to_csv(res / "emergence" / folder / "metrics.csv", index=False)
        pl.to_csv(res / "emergence" / folder / "pl_check.csv", index=False)
        (res / "emergence" / folder / "criterion.json").write_text("{}")
    partial = res / "emergence" / "ladder3000_archs" / "encdec"  # probed without --criterion: left out
    partial.mkdir()
    for name, frame in zip(("metrics.csv", "pl_check.csv"), _ladder_tables("encdec", {"femto": [0.5] * 3})):
        frame.to_csv(partial / name, index=False)
    table = res / "emergence" / "ladder3000_archs" / "seeds.csv"
    assert seed_tables.export_emergence_archs(res) == [table]
    text = table.read_text()
    assert "tiny,encoder,2,final_exact_match,0.72" in text and "encoder,exact_match,0,breakthroughness," in text
    assert "encdec" not in text
    c41 = next(c for c in load_registry(REPO / "seeds" / "claims.yaml") if c.id == "C41")
    assert evaluate(c41, tmp_path).verdict == verdict


def test_combined_ladder_table_refuses_an_architecture_twice(tmp_path):
    from archcmp.analysis.seeds import cli as seed_tables

    res = tmp_path / "experiments" / "results"
    for folder in ("ladder3000", "ladder3000_archs/decoder"):
        (res / "emergence" / folder).mkdir(parents=True)
        m, pl = _ladder_tables("decoder", {"femto": [0.1, 0.2, 0.3], "nano": [0.5, 0.6, 0.7]})
        m.to_csv(res / "emergence" / folder / "metrics.csv", index=False)
        pl.to_csv(res / "emergence" / folder / "pl_check.csv", index=False)
        (res / "emergence" / folder / "criterion.json").write_text("{}")
    with pytest.raises(ValueError, match="'decoder' appears in both"):
        seed_tables.export_emergence_archs(res)
