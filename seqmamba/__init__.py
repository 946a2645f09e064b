"""seqmamba: Mamba selective state-space models for DNA and audio.

    import seqmamba
    model = seqmamba.load("path/to/checkpoint")       # or a transformers MambaForCausalLM directory
    model = seqmamba.build_model(seqmamba.ModelConfig(d_model=256, n_layer=8, vocab_size=16))
    X = seqmamba.embed(model, ["ACGT...", "GGCA..."])      # (n, d_model) numpy array

The public names are imported on first use, so ``import seqmamba`` (and the CLI) stays fast.
"""
__version__ = "0.1.0"

_LAZY = {
    "load": "seqmamba.checkpoint",
    "CheckpointError": "seqmamba.checkpoint",
    "ModelConfig": "seqmamba.config",
    "ConfigError": "seqmamba.config",
    "build_model": "seqmamba.heads",
    "MambaLM": "seqmamba.heads",
    "MambaClassifier": "seqmamba.heads",
    "SeqMambaModel": "seqmamba.heads",
    "save_hf": "seqmamba.hf_interop",
    "embed": "seqmamba.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'seqmamba' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
