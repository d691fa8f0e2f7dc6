"""The length-extrapolation probe (``archcmp-analyze extrapolation``)."""
