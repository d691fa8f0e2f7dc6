"""The emergence probe (``archcmp-analyze emergence``)."""
