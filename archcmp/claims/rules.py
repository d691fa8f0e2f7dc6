"""Apply a claim's decision rule to the committed evidence.

Rule kinds (keys as in ``seeds/claims.yaml``; validated by :mod:`archcmp.claims.registry`):

* ``seed_difference``: per condition, the difference ``a - b`` of a metric over seeds (paired by
  seed unless ``paired: false``; with no ``b`` the values of ``a`` themselves) and its 95%
  interval over seeds (``interval: t`` or ``bootstrap``). A condition counts *for* the claim when
  the interval lies beyond ``min_effect`` (default 0) in the claimed ``direction`` (``greater`` /
  ``less``) and *against* it when it lies wholly on the other side of ``min_effect``; for
  ``equal`` it counts for when the interval is inside ``[-margin, margin]`` and against when it
  is wholly outside. With ``refute_needs_a_mean: x`` a condition may count against only if the
  mean of ``a`` over seeds is >= x (the arm the claim favours learned the task there); otherwise
  it votes neither way. Supported if >= m conditions count for (``min_conditions``, or
  ``min_fraction`` of the conditions listed or present), refuted if >= m count against.
* ``criterion``: a ``criterion.json``; ``on_met`` / ``on_not_met`` give the verdict. A criterion
  whose prerequisite failed (``"prerequisite_met": false``) was not judged: inconclusive, whatever
  ``on_not_met`` says.
* ``fit_comparison``: one fitted parameter of two groups from a fit table; the claimed
  direction holds if the intervals do not overlap; overlapping intervals or a flagged fit are
  inconclusive.
* ``holdout_prediction``: per group, whether the observed held-out value lies in the prediction
  interval (for) or outside it (against); flagged fits do not vote.
* ``all``: every part; refuted if any part is refuted, supported if all are supported, not run
  if none has evidence, else inconclusive.

Universal guards: fewer than :data:`MIN_SEEDS` seeds never gives supported/refuted (reason
``n_seeds=1 < 3``); a missing evidence file gives ``not run``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from archcmp.claims import evidence as ev
from archcmp.claims.registry import MIN_SEEDS, Claim

SUPPORTED, REFUTED, INCONCLUSIVE = "supported", "refuted", "inconclusive"
NOT_RUN, NOT_TESTABLE = "not run", "not testable"
VERDICTS = (SUPPORTED, REFUTED, INCONCLUSIVE, NOT_RUN, NOT_TESTABLE)


@dataclass
class Outcome:
    verdict: str
    kind: str
    n_seeds: int | None = None
    reason: str = ""
    evidence: list = field(default_factory=list)  # lines of text (markdown)
    paths: list = field(default_factory=list)     # evidence files, repo-relative

    def guarded(self) -> "Outcome":
        """Apply the seed guard: a verdict on fewer than MIN_SEEDS seeds is inconclusive."""
        if self.verdict in (SUPPORTED, REFUTED) and (self.n_seeds or 0) < MIN_SEEDS:
            would = f" (would be {self.verdict})"
            self.reason = _join(f"n_seeds={self.n_seeds or 0} < {MIN_SEEDS}{would}", self.reason)
            self.verdict = INCONCLUSIVE
        elif self.verdict == INCONCLUSIVE and self.n_seeds is not None and self.n_seeds < MIN_SEEDS:
            self.reason = _join(f"n_seeds={self.n_seeds} < {MIN_SEEDS}", self.reason)
        return self


def _join(*parts) -> str:
    return "; ".join(p for p in parts if p)


def fmt(x, spec: str = ".4g") -> str:
    """Fixed float formatting for reports ('nan' for missing); -0 prints as 0."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    x = float(x)
    if x == 0:
        x = 0.0
    return format(x, spec)


def fmt_interval(m, lo, hi, signed: bool = True) -> str:
    spec = "+.4g" if signed else ".4g"
    if math.isnan(lo) or math.isnan(hi):
        return f"{fmt(m, spec)} (no interval)"
    return f"{fmt(m, spec)} [{fmt(lo, spec)}, {fmt(hi, spec)}]"


def evaluate(claim: Claim, root: Path) -> Outcome:
    """The verdict for one claim (``root``: repository root the rule paths are relative to)."""
    if not claim.testable:
        return Outcome(NOT_TESTABLE, "none", reason=claim.reason)
    return apply_rule(claim.rule, Path(root))


def apply_rule(rule: dict, root: Path) -> Outcome:
    kind = rule["kind"]
    if kind == "all":
        return _all(rule, root)
    path_key = "path" if kind == "criterion" else "table"
    rel = rule[path_key]
    if not (root / rel).is_file():
        return Outcome(NOT_RUN, kind, reason=f"no evidence file {rel}", paths=[rel])
    out = {"seed_difference": _seed_difference, "criterion": _criterion,
           "fit_comparison": _fit_comparison, "holdout_prediction": _holdout}[kind](rule, root / rel)
    out.paths = [rel]
    return out.guarded()


# ----------------------------------------------------------------------------- seed_difference
def _cell(d, cond, group):
    """Values of one (condition, group) keyed by seed; non-finite values dropped (counted)."""
    g = d[(d["condition"] == cond) & (d["group"] == group)]
    s = g.set_index("seed")["value"].astype(float)
    finite = s[np.isfinite(s.to_numpy())]
    return finite.sort_index(), int(len(s) - len(finite))


def _vote(lo, hi, direction, margin, min_effect) -> int:
    """+1 for the claim, -1 against, 0 neither (also when the interval is undefined)."""
    if math.isnan(lo) or math.isnan(hi):
        return 0
    if direction == "equal":
        if -margin <= lo and hi <= margin:
            return 1
        return -1 if (lo > margin or hi < -margin) else 0
    if direction == "less":
        lo, hi = -hi, -lo
    if lo > min_effect:
        return 1
    return -1 if hi < min_effect else 0


def _seed_difference(rule, path) -> Outcome:
    df = ev.read_seed_table(path)
    a, b, metric = rule["a"], rule.get("b"), rule["metric"]
    direction, paired = rule["direction"], rule.get("paired", True)
    margin, min_effect = float(rule.get("margin", 0.0)), float(rule.get("min_effect", 0.0))
    level, method = float(rule.get("level", 0.95)), rule.get("interval", "t")
    d = df[df["metric"] == metric]
    if d.empty:
        return Outcome(NOT_RUN, "seed_difference", reason=f"metric {metric!r} not in {path.name}")
    listed = rule.get("conditions")
    conds = [str(c) for c in listed] if listed else sorted(d["condition"].unique())
    label = f"{a} − {b}" if b is not None else a
    needs_a = float(rule["refute_needs_a_mean"]) if "refute_needs_a_mean" in rule else None
    lines, votes, points, ns, dropped, absent, unlearned = [], [], [], [], 0, [], []
    for cond in conds:
        va, da = _cell(d, cond, a)
        vb, db = _cell(d, cond, b) if b is not None else (None, 0)
        dropped += da + db
        if len(va) == 0 or (vb is not None and len(vb) == 0):
            absent.append(cond)
            continue
        if vb is None:
            n = len(va)
            m, lo, hi = ev.mean_interval(va.to_numpy(), level, method)
        elif paired:
            common = va.index.intersection(vb.index)
            n = len(common)
            if n == 0:
                absent.append(cond)
                continue
            m, lo, hi = ev.mean_interval((va[common] - vb[common]).to_numpy(), level, method)
        else:
            n = min(len(va), len(vb))
            m, lo, hi = ev.welch_interval(va.to_numpy(), vb.to_numpy(), level)
        v = _vote(lo, hi, direction, margin, min_effect)
        guard = ""
        if v == -1 and needs_a is not None and float(va.mean()) < needs_a:
            v, guard = 0, f"; {a} mean {fmt(float(va.mean()))} < {fmt(needs_a)}: not learned, no vote against"
            unlearned.append(cond)
        votes.append(v)
        points.append(_vote(m, m, direction, margin, min_effect) == 1)
        ns.append(n)
        lines.append(f"{cond}: {label} = {fmt_interval(m, lo, hi)} (n={n}){guard}")
    if not votes:
        return Outcome(NOT_RUN, "seed_difference",
                       reason=f"no {metric} values for {label} under {', '.join(conds)}")
    n_conds = len(conds)
    need = int(rule["min_conditions"]) if "min_conditions" in rule else math.ceil(rule["min_fraction"] * n_conds - 1e-9)
    n_for, n_against = votes.count(1), votes.count(-1)
    claimed = {"greater": f"> {fmt(min_effect)}", "less": f"< {fmt(-min_effect)}",
               "equal": f"inside ±{fmt(margin)}"}[direction]
    head = (f"{metric}: {label}, {int(level * 100)}% {method}-interval over seeds "
            f"({'paired' if paired else 'unpaired'}); claimed {claimed}")
    notes = []
    if absent:
        notes.append(f"no data for {', '.join(absent)}")
    if dropped:
        notes.append(f"{dropped} non-finite values dropped")
    if unlearned:
        notes.append(f"{a} did not learn (mean < {fmt(needs_a)}) at {', '.join(unlearned)}: no vote against there")
    tally = f"{n_for} of {n_conds} conditions for, {n_against} against, need {need}"
    if min(ns) < MIN_SEEDS:  # too few seeds for intervals to decide: say where the means point
        notes.insert(0, f"means in the claimed direction at {sum(points)} of {len(points)}")
    if n_for >= need:
        verdict = SUPPORTED
    elif n_against >= need:
        verdict = REFUTED
    else:
        verdict = INCONCLUSIVE
    return Outcome(verdict, "seed_difference", n_seeds=min(ns), reason=_join(tally, *notes),
                   evidence=[head] + lines)


# ----------------------------------------------------------------------------- criterion
def _criterion(rule, path) -> Outcome:
    data = ev.read_criterion(path)
    met = data["met"]
    if met is None:  # pre-registered, not finished: no verdict either way
        return Outcome(NOT_RUN, "criterion", n_seeds=data["n_seeds"], reason=f"unfinished: {data['status']}",
                       evidence=[f"criterion: {' '.join(data['criterion'].split())}", f"status: {data['status']}"])
    if data.get("prerequisite_met", True) is False:  # the criterion was not judged: no verdict either way
        pre = data.get("prerequisite")
        lines = [f"criterion: {' '.join(data['criterion'].split())}",
                 f"prerequisite not met (n_seeds={data['n_seeds']})" + (f": {' '.join(pre.split())}"
                                                                        if isinstance(pre, str) else "")]
        return Outcome(INCONCLUSIVE, "criterion", n_seeds=data["n_seeds"],
                       reason="prerequisite not met (not judged)", evidence=lines)
    verdict = rule["on_met"] if met else rule["on_not_met"]
    extras = [f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in sorted(data.items())
              if k not in ("criterion", "met", "n_seeds") and isinstance(v, (int, float, str, bool))]
    lines = [f"criterion: {' '.join(data['criterion'].split())}",
             f"met: {'yes' if met else 'no'} (n_seeds={data['n_seeds']})"]
    if extras:
        lines.append(", ".join(extras[:8]))
    return Outcome(verdict, "criterion", n_seeds=data["n_seeds"],
                   reason=f"criterion {'met' if met else 'not met'}", evidence=lines)


# ----------------------------------------------------------------------------- fit_comparison
def _fit_row(df, rule, group):
    r = df[(df["fit"] == rule["fit"]) & (df["parameter"] == rule["parameter"]) & (df["group"] == group)]
    return None if r.empty else r.iloc[0]


def _fit_comparison(rule, path) -> Outcome:
    df = ev.read_fit_table(path)
    rows = {g: _fit_row(df, rule, g) for g in (rule["a"], rule["b"])}
    missing = [g for g, r in rows.items() if r is None]
    if missing:
        return Outcome(NOT_RUN, "fit_comparison",
                       reason=f"no {rule['fit']} {rule['parameter']} row for {', '.join(missing)} in {path.name}")
    lines, flags, ns = [], [], []
    for g, r in rows.items():
        est, lo, hi = (float(r[c]) for c in ("estimate", "lo", "hi"))
        n = int(r["n_seeds"])
        ns.append(n)
        fl = ev.split_flags(r["flags"])
        flags += [f"{g}: {f}" for f in fl]
        lines.append(f"{rule['fit']} {rule['parameter']} {g}: {fmt_interval(est, lo, hi, signed=False)} "
                     f"({r['interval']}, {int(r['n_points'])} points, n_seeds={n})"
                     + (f" — flagged: {'; '.join(fl)}" if fl else ""))
    (a, b) = (rows[rule["a"]], rows[rule["b"]])
    alo, ahi, blo, bhi = (float(a["lo"]), float(a["hi"]), float(b["lo"]), float(b["hi"]))
    if rule["direction"] == "less":
        alo, ahi, blo, bhi = -ahi, -alo, -bhi, -blo
    n_seeds = min(ns)
    if flags:
        return Outcome(INCONCLUSIVE, "fit_comparison", n_seeds=n_seeds,
                       reason="fit flagged: " + "; ".join(flags), evidence=lines)
    if any(math.isnan(v) for v in (alo, ahi, blo, bhi)):
        return Outcome(INCONCLUSIVE, "fit_comparison", n_seeds=n_seeds, reason="no interval", evidence=lines)
    if alo > bhi:
        return Outcome(SUPPORTED, "fit_comparison", n_seeds=n_seeds, reason="intervals separate as claimed", evidence=lines)
    if ahi < blo:
        return Outcome(REFUTED, "fit_comparison", n_seeds=n_seeds, reason="intervals separate against the claim", evidence=lines)
    return Outcome(INCONCLUSIVE, "fit_comparison", n_seeds=n_seeds, reason="intervals overlap", evidence=lines)


# ----------------------------------------------------------------------------- holdout_prediction
def _holdout(rule, path) -> Outcome:
    df = ev.read_prediction_table(path)
    lines, votes, ns, notes = [], [], [], []
    for g in rule["groups"]:
        r = df[df["group"] == g]
        if r.empty:
            notes.append(f"no row for {g}")
            continue
        r = r.iloc[0]
        obs, pred, lo, hi = (float(r[c]) for c in ("observed", "predicted", "lo", "hi"))
        fl = ev.split_flags(r["flags"])
        ns.append(int(r["n_seeds"]))
        if fl:
            v, why = 0, "flagged: " + "; ".join(fl)
        elif math.isnan(lo) or math.isnan(hi):
            v, why = 0, "no prediction interval"
        else:
            v = 1 if lo <= obs <= hi else -1
            why = "inside" if v == 1 else "outside"
        votes.append(v)
        lines.append(f"{g} at x={fmt(float(r['x_heldout']), '.3g')}: observed {fmt(obs)}, predicted "
                     f"{fmt_interval(pred, lo, hi, signed=False)} from {int(r['n_fit_points'])} points — {why}")
        if fl:
            notes.append(f"{g} fit flagged: {'; '.join(fl)}")
    if not votes:
        return Outcome(NOT_RUN, "holdout_prediction", reason=_join(*notes))
    need = int(rule["min_groups"])
    n_for, n_against = votes.count(1), votes.count(-1)
    tally = f"{n_for} of {len(rule['groups'])} groups inside, {n_against} outside, need {need}"
    verdict = SUPPORTED if n_for >= need else REFUTED if n_against >= need else INCONCLUSIVE
    return Outcome(verdict, "holdout_prediction", n_seeds=min(ns), reason=_join(tally, *notes), evidence=lines)


# ----------------------------------------------------------------------------- all
def _all(rule, root) -> Outcome:
    parts = [apply_rule(p, root) for p in rule["parts"]]
    verdicts = [p.verdict for p in parts]
    if REFUTED in verdicts:
        verdict = REFUTED
    elif all(v == SUPPORTED for v in verdicts):
        verdict = SUPPORTED
    elif all(v == NOT_RUN for v in verdicts):
        verdict = NOT_RUN
    else:
        verdict = INCONCLUSIVE
    ns = [p.n_seeds for p in parts if p.n_seeds is not None]
    lines, reasons, paths = [], [], []
    for i, p in enumerate(parts, 1):
        lines += [f"part {i} ({p.kind}, {p.verdict}): {p.evidence[0] if p.evidence else p.reason}"]
        lines += [f"part {i}: {ln}" for ln in p.evidence[1:]]
        reasons.append(f"part {i} {p.verdict}" + (f": {p.reason}" if p.reason else ""))
        paths += [q for q in p.paths if q not in paths]
    return Outcome(verdict, "all", n_seeds=min(ns) if ns else None, reason="; ".join(reasons),
                   evidence=lines, paths=paths)
