"""Model building blocks: mixer -> block -> backbone (heads live in seqmamba.heads)."""
from .backbone import MambaBackbone, mask_lengths
from .block import Block, RMSNorm
from .inference import InferenceCache, LayerCache
from .mixer import BiMambaMixer, MambaMixer
from .registry import backbone_names, build_backbone, get_backbone_class, register_backbone

__all__ = ["MambaMixer", "BiMambaMixer", "Block", "RMSNorm", "MambaBackbone", "InferenceCache",
           "LayerCache", "build_backbone", "get_backbone_class", "register_backbone",
           "backbone_names", "mask_lengths"]
