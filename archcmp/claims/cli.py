"""``archcmp-claims``: compute every seed claim's verdict and write CLAIMS.md and claims.csv.

    archcmp-claims                 # regenerate experiments/results/CLAIMS.md and claims.csv
    archcmp-claims --check         # exit 1 (one-line summary) if the committed files are stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archcmp.claims.evidence import EvidenceError
from archcmp.claims.registry import RegistryError, load_registry
from archcmp.claims.report import render_csv, render_markdown
from archcmp.claims.rules import evaluate

MD_NAME, CSV_NAME = "CLAIMS.md", "claims.csv"


def generate(root: Path, registry: Path, results: Path) -> dict[str, str]:
    """``{file name: content}`` for the two outputs (paths relative to ``root``)."""
    claims = load_registry(root / registry)
    outcomes = {c.id: evaluate(c, root) for c in claims}
    return {MD_NAME: render_markdown(claims, outcomes, root=root, results_dir=results),
            CSV_NAME: render_csv(claims, outcomes)}


def diff_summary(name: str, old: str | None, new: str) -> str | None:
    """One phrase describing how ``old`` differs from ``new`` (None if identical)."""
    if old is None:
        return f"{name} missing"
    if old == new:
        return None
    a, b = old.splitlines(), new.splitlines()
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if name == CSV_NAME and i < len(a) and i < len(b):
        oa, ob = a[i].split(","), b[i].split(",")
        if oa[:1] == ob[:1] and len(oa) > 1 and len(ob) > 1 and oa[1] != ob[1]:
            return f"{name}: {oa[0]} {oa[1]} -> {ob[1]}"
    return f"{name} differs from line {i + 1} ({len(a)} vs {len(b)} lines)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="archcmp-claims", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    p.add_argument("--registry", type=Path, default=Path("seeds/claims.yaml"))
    p.add_argument("--results", type=Path, default=Path("experiments/results"))
    p.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = p.parse_args(argv)
    try:
        files = generate(args.root, args.registry, args.results)
    except (RegistryError, EvidenceError) as exc:
        print(f"archcmp-claims: {exc}", file=sys.stderr)
        return 2
    out_dir = args.root / args.results
    if args.check:
        diffs = []
        for name, text in files.items():
            path = out_dir / name
            old = path.read_text(encoding="utf-8") if path.is_file() else None
            d = diff_summary(name, old, text)
            if d:
                diffs.append(d)
        if diffs:
            print("archcmp-claims --check: stale: " + "; ".join(diffs) + " (run archcmp-claims)")
            return 1
        print("archcmp-claims --check: CLAIMS.md and claims.csv are up to date")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {out_dir / MD_NAME} and {out_dir / CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
