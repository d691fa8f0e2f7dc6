"""archcmp: compare encoder, decoder, prefix-LM and encoder-decoder transformers on identical data.

The analysis API is importable from here (loaded on first use, so ``import archcmp`` stays light)::

    from archcmp import load_run, load_pretrained, attention, hidden_states
"""

__version__ = "0.1.0"

_PUBLIC = {
    "load_run": "archcmp.loading.run",
    "load_pretrained": "archcmp.loading.pretrained",
    "attention": "archcmp.analysis.common.introspect",
    "hidden_states": "archcmp.analysis.common.introspect",
    "logits": "archcmp.analysis.common.introspect",
    "Loaded": "archcmp.loading.loaded",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'archcmp' has no attribute {name!r}")
