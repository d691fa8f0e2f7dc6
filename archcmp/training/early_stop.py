"""``train.early_stop``: end a run before ``train.steps`` once an evaluation metric has reached a
threshold and stayed there.

The rule is checked at every evaluation (``train.eval_every``). A member's *streak* counts the
consecutive evaluations at which ``metric`` was at or past ``threshold`` (at or above it for
accuracies, at or below it for losses); the member has *met* the rule once its streak reaches
``hold``, and stays met from then on. A run ends at the evaluation where it has met the rule; a
``train.num_seeds=k`` group ends when every member has (the ones that met it earlier keep
training with the others, as they would have without the rule).

Nothing else changes: the learning-rate schedule still spans ``train.steps``, so the curve of a
stopped run is the first part of the curve the full run would have had. The streak and the step
each member met the rule are training counters, saved with every checkpoint, so a resumed run
carries on counting where it was (and a run resumed after its stop ends at once). The settings are
part of the run's identity (:mod:`archcmp.training.identity`); the summary records ``stopped_at``,
``stop_reason`` and, when the rule is set, ``early_stop`` (the rule and the step it was met).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from archcmp.model.config import ConfigError

# The evaluation metrics (archcmp.training.evaluation.eval_metrics) a rule may watch, with the
# direction that counts as better; train_* ones exist only with train.eval_train_examples > 0.
METRICS = {"eval_exact_match": "max", "eval_accuracy": "max", "eval_loss": "min", "eval_bpc": "min",
           "eval_objective_loss": "min", "train_exact_match": "max", "train_eval_loss": "min"}
FRACTIONS = ("eval_exact_match", "eval_accuracy", "train_exact_match")  # values in [0, 1]

STREAK, MET_AT = "early_stop_streak", "early_stop_met_at"  # the member counters


@dataclass(frozen=True)
class EarlyStop:
    metric: str
    threshold: float
    hold: int = 1

    @property
    def comparison(self) -> str:
        return ">=" if METRICS[self.metric] == "max" else "<="

    def describe(self) -> str:
        times = "1 evaluation" if self.hold == 1 else f"{self.hold} consecutive evaluations"
        return f"{self.metric} {self.comparison} {self.threshold:g} at {times}"

    def passes(self, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(self.metric)
        if value is None or value != value:  # missing or NaN never counts
            return False
        return value >= self.threshold if METRICS[self.metric] == "max" else value <= self.threshold

    def update(self, counters: dict, metrics: Mapping[str, float], step: int) -> None:
        """One evaluation of one member: extend or reset its streak; latch the step it met the rule."""
        if counters.get(MET_AT) is not None:
            return
        counters[STREAK] = counters.get(STREAK, 0) + 1 if self.passes(metrics) else 0
        if counters[STREAK] >= self.hold:
            counters[MET_AT] = step

    @staticmethod
    def met(counters: Mapping[str, Any]) -> bool:
        return counters.get(MET_AT) is not None

    def record(self, counters: Mapping[str, Any]) -> dict:
        """The summary's ``early_stop`` entry of one member."""
        return {"metric": self.metric, "threshold": self.threshold, "hold": self.hold,
                "met_at": counters.get(MET_AT)}


def outcome(rule: EarlyStop | None, counters: Mapping[str, Any], step: int, total_steps: int,
            stopped: bool) -> dict:
    """The summary fields of how a finished run ended: ``stopped_at``, ``stop_reason``, ``early_stop``."""
    if stopped:
        reason = f"early_stop: {rule.describe()} (this member from step {counters.get(MET_AT)})"
    else:
        reason = f"train.steps={total_steps} reached"
        if rule is not None:
            reason += f" (early_stop {rule.describe()} {'met' if rule.met(counters) else 'not met'})"
    out: dict[str, Any] = {"stopped_at": step, "stop_reason": reason}
    if rule is not None:
        out["early_stop"] = rule.record(counters)
    return out


def parse(node: Mapping[str, Any] | None, eval_train_examples: int) -> EarlyStop | None:
    """``train.early_stop`` (types already checked by config_types) as a rule, or None when
    ``metric`` is unset; every error is one line naming the key and value."""
    node = dict(node or {})
    metric = node.get("metric")
    if metric is None:
        if node.get("threshold") is not None:
            raise ConfigError(f"train.early_stop.threshold={node['threshold']!r}: set train.early_stop.metric "
                              f"too (one of {sorted(METRICS)})")
        return None
    if metric not in METRICS:
        raise ConfigError(f"train.early_stop.metric={metric!r}: not an evaluation metric; choose one of "
                          f"{sorted(METRICS)}")
    if metric.startswith("train_") and not eval_train_examples:
        raise ConfigError(f"train.early_stop.metric={metric!r}: needs train.eval_train_examples > 0 "
                          "(training examples are not scored)")
    threshold = node.get("threshold")
    if threshold is None:
        raise ConfigError(f"train.early_stop.threshold=None: set the value {metric} must reach")
    if metric in FRACTIONS and not 0 < threshold <= 1:
        raise ConfigError(f"train.early_stop.threshold={threshold!r}: {metric} is a fraction; must be in (0, 1]")
    if metric not in FRACTIONS and threshold < 0:
        raise ConfigError(f"train.early_stop.threshold={threshold!r}: {metric} is a loss; must be >= 0")
    return EarlyStop(metric=metric, threshold=float(threshold), hold=int(node.get("hold", 1)))
