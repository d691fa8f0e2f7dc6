"""Loading models to read text with: runs of ours (:func:`load_run`) and imported checkpoints (:func:`load_pretrained`)."""
