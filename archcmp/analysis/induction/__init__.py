"""The induction-head probe (``archcmp-analyze induction``)."""
