"""seqmamba: Mamba selective state-space models for DNA and audio."""
__version__ = "0.1.0"
