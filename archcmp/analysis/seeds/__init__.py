"""Per-seed evidence tables for the claims engine (``archcmp-analyze seeds``)."""
