"""Verdicts for the seed claims (``archcmp-claims``).

``seeds/claims.yaml`` lists every claim of the seed notes with a decision rule written before
the runs; :mod:`registry` loads and validates it, :mod:`evidence` reads the committed per-seed
result tables, :mod:`rules` applies each rule (with the universal guards: fewer than 3 seeds is
never supported/refuted, missing evidence is "not run", a flagged fit is inconclusive),
:mod:`report` renders ``experiments/results/CLAIMS.md`` and ``claims.csv`` and :mod:`cli` is
the console script.
"""
