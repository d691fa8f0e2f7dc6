"""The grokking probe (``archcmp-analyze grokking``)."""
