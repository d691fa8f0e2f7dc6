"""Load and validate ``seeds/claims.yaml`` (the seed-claim registry).

Every problem is a :class:`RegistryError` whose one-line message names the claim, the key and
the offending value, e.g. ``seeds/claims.yaml: C04.rule.parts[0].direction = 'up': must be one
of equal, greater, less``.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SOURCES = ("000", "001", "002", "003", "004")
MIN_SEEDS = 3
DIRECTIONS = ("greater", "less", "equal")
VERDICT_OPTIONS = ("supported", "refuted", "inconclusive")
CLAIM_KEYS = {"id", "sources", "claim", "testable", "reason", "experiments", "metrics", "figures", "rule"}

# Per rule kind: required keys, optional keys.
RULE_KEYS = {
    "seed_difference": ({"table", "metric", "a", "direction"},
                        {"b", "paired", "conditions", "min_conditions", "min_fraction", "margin",
                         "min_effect", "interval", "level", "refute_needs_a_mean"}),
    "criterion": ({"path", "on_met", "on_not_met"}, set()),
    "fit_comparison": ({"table", "fit", "parameter", "a", "b", "direction"}, set()),
    "holdout_prediction": ({"table", "groups", "min_groups"}, set()),
    "all": ({"parts"}, set()),
}
TOP_RULE_KEYS = {"rule_written", "prose", "amended"}


class RegistryError(ValueError):
    """The registry is malformed; the message is one line naming key and value."""


@dataclass(frozen=True)
class Claim:
    id: str
    sources: tuple
    claim: str
    testable: bool
    reason: str = ""
    experiments: tuple = ()
    metrics: tuple = ()
    figures: tuple = ()
    rule: dict = field(default_factory=dict)

    @property
    def rule_written(self) -> str:
        return str(self.rule.get("rule_written", ""))


def load_registry(path) -> list[Claim]:
    """Parse and validate the registry; returns the claims in file order."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"claims registry not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return validate(data, str(path))


def validate(data, where: str = "registry") -> list[Claim]:
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise RegistryError(f"{where}: top level must be a mapping with a 'claims' list")
    claims, seen = [], set()
    for i, raw in enumerate(data["claims"]):
        claims.append(_claim(raw, f"{where}: claims[{i}]", seen))
    ids = [c.id for c in claims]
    want = [f"C{i:02d}" for i in range(1, len(ids) + 1)]
    if ids != want:
        first = next(i for i, (g, w) in enumerate(zip(ids, want)) if g != w)
        raise RegistryError(f"{where}: claim ids must run C01..C{len(ids):02d} in order; "
                            f"position {first + 1} is {ids[first]!r}, expected {want[first]!r}")
    return claims


def _fail(where, key, value, why):
    raise RegistryError(f"{where}.{key} = {value!r}: {why}")


def _claim(raw, where, seen) -> Claim:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: each claim must be a mapping, got {type(raw).__name__}")
    cid = raw.get("id")
    if not isinstance(cid, str) or not re.fullmatch(r"C\d{2}", cid):
        _fail(where, "id", cid, "must look like 'C01'")
    where = where.split(":")[0] + f": {cid}"
    if cid in seen:
        _fail(where, "id", cid, "duplicate id")
    seen.add(cid)
    unknown = sorted(set(raw) - CLAIM_KEYS)
    if unknown:
        _fail(where, unknown[0], raw[unknown[0]], f"unknown key (allowed: {', '.join(sorted(CLAIM_KEYS))})")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or any(s not in SOURCES for s in sources):
        _fail(where, "sources", sources, f"must be a non-empty list of {', '.join(SOURCES)}")
    text = raw.get("claim")
    if not isinstance(text, str) or len(text.strip()) < 10:
        _fail(where, "claim", text, "must be a sentence in our own words")
    testable = raw.get("testable")
    if not isinstance(testable, bool):
        _fail(where, "testable", testable, "must be true or false")
    lists = {}
    for key in ("experiments", "metrics", "figures"):
        v = raw.get(key, [])
        if not isinstance(v, list) or any(not isinstance(s, str) for s in v):
            _fail(where, key, v, "must be a list of strings")
        lists[key] = tuple(v)
    reason = raw.get("reason", "")
    rule = raw.get("rule")
    if not testable:
        if not isinstance(reason, str) or not reason.strip():
            _fail(where, "reason", reason, "an untestable claim must say why")
        if rule is not None:
            _fail(where, "rule", "...", "an untestable claim has no rule")
        rule = {}
    else:
        if not lists["experiments"] or not lists["metrics"]:
            _fail(where, "experiments", lists["experiments"], "a testable claim names its experiment(s) and metric(s)")
        if not isinstance(rule, dict):
            _fail(where, "rule", rule, "a testable claim needs a decision rule")
        written = rule.get("rule_written")
        if isinstance(written, str):
            try:
                written = dt.date.fromisoformat(written)
            except ValueError:
                _fail(where, "rule.rule_written", written, "must be an ISO date (YYYY-MM-DD)")
        if not isinstance(written, dt.date):
            _fail(where, "rule.rule_written", written, "must be an ISO date (YYYY-MM-DD)")
        prose = rule.get("prose")
        if not isinstance(prose, str) or not prose.strip():
            _fail(where, "rule.prose", prose, "the rule must be stated in prose")
        rule = {**rule, "rule_written": written.isoformat()}
        if "amended" in rule:
            rule["amended"] = _amendments(rule["amended"], written, where + ".rule.amended")
        _rule(rule, where + ".rule", top=True)
    return Claim(id=cid, sources=tuple(sources), claim=" ".join(text.split()), testable=testable,
                 reason=" ".join(str(reason).split()), rule=rule, **lists)


def _amendments(raw, written: dt.date, where: str) -> list[dict]:
    """``amended``: dated changes to a rule, each ``{date, change}``; the original ``prose`` stays as
    written, so a reader sees both. A date must be ISO and not before ``rule_written``."""
    if not isinstance(raw, list) or not raw:
        raise RegistryError(f"{where} = {raw!r}: must be a non-empty list of {{date, change}}")
    out = []
    for i, a in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(a, dict) or set(a) != {"date", "change"}:
            raise RegistryError(f"{at} = {a!r}: must be a mapping with exactly the keys date and change")
        date = a["date"]
        try:
            date = date if isinstance(date, dt.date) else dt.date.fromisoformat(str(date))
        except ValueError:
            _fail(at, "date", a["date"], "must be an ISO date (YYYY-MM-DD)")
        if date < written:
            _fail(at, "date", a["date"], f"is before rule_written {written.isoformat()}")
        change = a["change"]
        if not isinstance(change, str) or not change.strip():
            _fail(at, "change", change, "must say in prose what changed and why")
        out.append({"date": date.isoformat(), "change": " ".join(change.split())})
    return out


def _rule(rule, where, top=False):
    kind = rule.get("kind")
    if kind not in RULE_KEYS:
        _fail(where, "kind", kind, f"must be one of {', '.join(sorted(RULE_KEYS))}")
    required, optional = RULE_KEYS[kind]
    allowed = required | optional | {"kind"} | (TOP_RULE_KEYS if top else set())
    missing = sorted(required - set(rule))
    if missing:
        _fail(where, missing[0], None, f"required for kind {kind}")
    unknown = sorted(set(rule) - allowed)
    if unknown:
        _fail(where, unknown[0], rule[unknown[0]], f"unknown key for kind {kind}")
    if "direction" in rule and rule["direction"] not in DIRECTIONS:
        _fail(where, "direction", rule["direction"], f"must be one of {', '.join(sorted(DIRECTIONS))}")
    if kind == "seed_difference":
        if rule["direction"] == "equal" and not _positive(rule.get("margin")):
            _fail(where, "margin", rule.get("margin"), "direction 'equal' needs a positive margin")
        if ("min_conditions" in rule) == ("min_fraction" in rule):
            _fail(where, "min_conditions", rule.get("min_conditions"), "give exactly one of min_conditions, min_fraction")
        if "min_conditions" in rule and not (isinstance(rule["min_conditions"], int) and rule["min_conditions"] >= 1):
            _fail(where, "min_conditions", rule["min_conditions"], "must be an integer >= 1")
        if "min_fraction" in rule and not (_positive(rule["min_fraction"]) and rule["min_fraction"] <= 1):
            _fail(where, "min_fraction", rule["min_fraction"], "must be in (0, 1]")
        if rule.get("interval", "t") not in ("t", "bootstrap"):
            _fail(where, "interval", rule["interval"], "must be 't' or 'bootstrap'")
        if "b" not in rule and rule["direction"] == "equal":
            _fail(where, "b", None, "direction 'equal' compares two groups")
        guard = rule.get("refute_needs_a_mean")
        if guard is not None and not (isinstance(guard, (int, float)) and not isinstance(guard, bool)
                                      and math.isfinite(guard)):
            _fail(where, "refute_needs_a_mean", guard, "must be a finite number")
    if kind == "criterion":
        for key in ("on_met", "on_not_met"):
            if rule[key] not in VERDICT_OPTIONS:
                _fail(where, key, rule[key], f"must be one of {', '.join(VERDICT_OPTIONS)}")
    if kind == "holdout_prediction":
        groups = rule["groups"]
        if not isinstance(groups, list) or not groups:
            _fail(where, "groups", groups, "must be a non-empty list")
        if not isinstance(rule["min_groups"], int) or not 1 <= rule["min_groups"] <= len(groups):
            _fail(where, "min_groups", rule["min_groups"], f"must be an integer in 1..{len(groups)}")
    if kind == "all":
        parts = rule["parts"]
        if not isinstance(parts, list) or len(parts) < 2:
            _fail(where, "parts", parts, "kind 'all' needs a list of >= 2 rules")
        for i, part in enumerate(parts):
            if not isinstance(part, dict):
                _fail(where, f"parts[{i}]", part, "must be a mapping")
            if part.get("kind") == "all":
                _fail(where, f"parts[{i}].kind", "all", "parts cannot nest 'all'")
            _rule(part, f"{where}.parts[{i}]")


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
