"""The decoding probe (``archcmp-analyze decoding``): diversity, repetition and quality of generations."""
