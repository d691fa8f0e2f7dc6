"""The command-line header every probe shares: ``archcmp-analyze NAME PATH... [--out DIR]``."""
from __future__ import annotations

import argparse
from pathlib import Path


def probe_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """A parser for ``archcmp-analyze <name>``: its description (the first paragraph of ``doc``),
    the run or sweep directories, and ``--out`` (default: :func:`out_dir`); the probe adds its own."""
    p = argparse.ArgumentParser(prog=f"archcmp-analyze {name}", description=doc.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories")
    p.add_argument("--out", type=Path, default=None, help=f"output directory (default <first PATH>/analysis/{name})")
    return p


def out_dir(args: argparse.Namespace, name: str) -> Path:
    """``--out``, else ``<first PATH>/analysis/<name>``."""
    return args.out or (Path(args.paths[0]) / "analysis" / name)
