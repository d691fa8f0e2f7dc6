"""``--wandb`` for every ``archcmp-analyze`` command: the same options, the same kind of wandb run.

Each command adds the options with :func:`add_options` and, when ``--wandb`` is given, logs its
tables (csv -> ``wandb.Table``, markdown as a file), figures (``wandb.Image``) and headline numbers
(run summary) through :func:`log_outputs`: one wandb run per analysis, named
``<command>-analysis-<out dir>``, grouped by command, job type ``analysis``, its files under the
output directory. Offline unless ``--wandb-mode`` (or ``WANDB_MODE``, which wins with a warning).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from archcmp.tracking.wandb_tracker import MODES


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("wandb")
    g.add_argument("--wandb", action="store_true", help="log the tables and figures to Weights & Biases")
    g.add_argument("--wandb-project", default="archcmp", help="wandb project (default archcmp)")
    g.add_argument("--wandb-entity", default=None, help="wandb entity (default: yours)")
    g.add_argument("--wandb-mode", default="offline", choices=MODES,
                   help="offline (default; sync later with `wandb sync`), online or disabled")


def log_outputs(args: argparse.Namespace, command: str, out: Path, files: Mapping[str, Path],
                summary: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> None:
    """One wandb run for this analysis: ``summary`` numbers, then ``files`` (missing ones skipped)."""
    from archcmp.tracking.wandb_tracker import WandbTracker

    tracker = WandbTracker(project=args.wandb_project, entity=args.wandb_entity, mode=args.wandb_mode,
                           name=f"{command}-analysis-{Path(out).name}", group=command, job_type="analysis",
                           dir=out, config={"command": command, **dict(config or {})})
    with tracker:
        if summary:
            tracker.log_summary(dict(summary))
        tracker.log_files({k: Path(p) for k, p in files.items() if Path(p).exists()})
