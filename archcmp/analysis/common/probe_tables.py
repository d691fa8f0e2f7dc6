"""What the per-run probe CLIs (extrapolation, decoding) share: walking the runs under the given
paths, intervals over seeds, and writing the per-run / summary / per-seed tables."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd


def collect_rows(probe: str, paths, evaluate: Callable[[Path], list[dict]]) -> list[dict] | None:
    """``evaluate(run_dir)`` rows of every run under ``paths`` (a line per run on stderr); None
    after a one-line error when there is no run."""
    from archcmp.analysis.emergence.cli import locate_runs
    from archcmp.distributed.hosts import quiet_libraries

    quiet_libraries()
    try:
        run_dirs = locate_runs(paths)
    except FileNotFoundError as err:
        print(f"{probe}: error: {err}", file=sys.stderr)
        return None
    rows = []
    for d in run_dirs:
        rows += evaluate(d)
        print(f"{probe}: {d.name}: done", file=sys.stderr)
    return rows


def write_tables(out: Path, **tables: pd.DataFrame) -> None:
    """``<name>.csv`` for each table (created folder, 6 significant digits)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")


def t_interval(values) -> tuple[float, float, int]:
    """Mean and 95% t half-width over seeds (NaN half-width for one seed; NaNs dropped)."""
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    if v.size == 1:
        return float(v[0]), math.nan, 1
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), half, int(v.size)
