"""Generation for all four architectures: greedy, sampling and beam search, with or without the KV cache."""
