"""The model family: one frozen config, attention masks, shared layers, the four architectures, losses and exact parameter / FLOP counts."""
