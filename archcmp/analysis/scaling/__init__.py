"""The scaling-law probe (``archcmp-analyze scaling``)."""
