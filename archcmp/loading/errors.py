"""The error every checkpoint importer raises (safetensors directories and GGUF files alike)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported (the message names the file, key or tensor)."""
