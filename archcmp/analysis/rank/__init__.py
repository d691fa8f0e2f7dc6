"""The attention-rank probe (``archcmp-analyze rank``)."""
