"""Fine-tuning results (``archcmp-analyze finetune``)."""
