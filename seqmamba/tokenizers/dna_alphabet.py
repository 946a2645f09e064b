"""The DNA alphabet as byte lookup tables, shared by the DNA tokenizers.

Everything here works on whole numpy byte arrays (``np.frombuffer``) so a chromosome of tens
of megabases is validated and mapped in a few vectorised passes, never per character in Python.

Base codes: A=0, C=1, G=2, T=3, N=4 (any case).  IUPAC ambiguity codes R Y K M S W B D H V map
to N.  Any other byte is invalid (code -1), or code 5 when the caller asked to keep invalid
characters as unknown.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import BOS_ID, EOS_ID, PAD_ID, TokenizerError

__all__ = [
    "BASES", "IUPAC_AMBIGUITY", "N_CODE", "INVALID_CODE", "to_byte_array", "dna_codes",
    "soft_mask", "reverse_complement", "reverse_complement_segments", "FRAME_IDS",
    "COMPLEMENT_BYTES", "CODE_OF_BYTE",
]

BASES = "ACGTN"
IUPAC_AMBIGUITY = "RYKMSWBDHV"
N_CODE = 4
INVALID_CODE = 5  # only produced with invalid="unk"
_VALID_INVALID_MODES = ("error", "unk")

CODE_OF_BYTE = np.full(256, -1, dtype=np.int8)
for _i, _b in enumerate(BASES):
    CODE_OF_BYTE[ord(_b)] = CODE_OF_BYTE[ord(_b.lower())] = _i
for _b in IUPAC_AMBIGUITY:
    CODE_OF_BYTE[ord(_b)] = CODE_OF_BYTE[ord(_b.lower())] = N_CODE

_LOWER_LUT = np.zeros(256, dtype=bool)
_LOWER_LUT[ord("a"):ord("z") + 1] = True

# Complement of every valid symbol, case preserved (soft-masking survives reverse complement).
# IUPAC: R(AG)<->Y(CT), K(GT)<->M(AC), B(CGT)<->V(ACG), D(AGT)<->H(ACT); S, W, N are their own.
_PAIRS = "ATCGRYKMBVDHSSWWNN"
_COMP_SRC = "".join(_PAIRS[i] + _PAIRS[i + 1] for i in range(0, len(_PAIRS), 2))
_COMP_DST = "".join(_PAIRS[i + 1] + _PAIRS[i] for i in range(0, len(_PAIRS), 2))
COMPLEMENT_BYTES = bytes.maketrans((_COMP_SRC + _COMP_SRC.lower()).encode(),
                              (_COMP_DST + _COMP_DST.lower()).encode())

# pad/bos/eos frame a sequence: they keep their positions under reverse complement.
FRAME_IDS = (PAD_ID, BOS_ID, EOS_ID)


def _describe_byte(b: int) -> str:
    return repr(chr(b)) if b < 128 else f"byte 0x{b:02x}"


def to_byte_array(seq: Any) -> np.ndarray:
    """A DNA sequence (str, bytes-like, uint8 array, or an object with ``__bytes__`` such as a
    Biopython ``Seq``) as a uint8 numpy array, without copying where possible."""
    if isinstance(seq, str):
        try:
            raw = seq.encode("ascii")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"invalid DNA character {seq[e.start]!r} at position {e.start} "
                "(expected A, C, G, T, N or an IUPAC code, any case)") from None
        return np.frombuffer(raw, dtype=np.uint8)
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8 or seq.ndim != 1:
            raise TokenizerError(f"expected a 1-D uint8 array, got {seq.dtype} with shape {seq.shape}")
        return seq
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return np.frombuffer(seq, dtype=np.uint8)
    if hasattr(type(seq), "__bytes__"):
        return np.frombuffer(bytes(seq), dtype=np.uint8)
    raise TokenizerError(f"expected a DNA sequence (str or bytes), got {type(seq).__name__}")


def dna_codes(seq: Any, invalid: str = "error") -> np.ndarray:
    """Base codes (int8, see module doc) for a whole sequence in one table lookup.

    invalid="error" raises naming the first invalid character and its 0-based position;
    invalid="unk" maps invalid characters to INVALID_CODE.
    """
    arr = to_byte_array(seq)
    codes = CODE_OF_BYTE[arr]
    if codes.size and codes.min() < 0:
        bad = codes < 0
        if invalid == "unk":
            codes[bad] = INVALID_CODE
        else:
            pos = int(np.argmax(bad))
            n_bad = int(bad.sum())
            more = f"; {n_bad} invalid characters in total" if n_bad > 1 else ""
            raise TokenizerError(
                f"invalid DNA character {_describe_byte(int(arr[pos]))} at position {pos} "
                f"(expected A, C, G, T, N or an IUPAC code, any case{more})")
    return codes


def check_invalid_mode(invalid: str) -> str:
    if invalid not in _VALID_INVALID_MODES:
        raise TokenizerError(f"invalid must be one of {_VALID_INVALID_MODES}, got {invalid!r}")
    return invalid


def soft_mask(seq: Any) -> np.ndarray:
    """True where the sequence is lowercase (soft-masked repeats in UCSC/Ensembl FASTA)."""
    return _LOWER_LUT[to_byte_array(seq)]


def reverse_complement(seq: Any) -> str:
    """Reverse complement of a DNA string, case and IUPAC codes preserved (R<->Y, K<->M,
    B<->V, D<->H; S, W, N unchanged).  Invalid characters raise like encoding does (position in
    the input)."""
    arr = to_byte_array(seq)
    dna_codes(arr)  # validation only: the same error message as encode
    return arr.tobytes().translate(COMPLEMENT_BYTES)[::-1].decode("ascii")


def reverse_complement_segments(ids: Any, complement_lut: torch.Tensor) -> torch.Tensor:
    """Reverse complement token ids along the last dim, any leading dims.

    Frame tokens (pad, bos, eos) keep their positions; each maximal run of other tokens between
    them is reversed in place and complemented through ``complement_lut`` (a LongTensor over
    the vocabulary; mask/unk map to themselves).  So ``[bos] x [eos] pad pad`` becomes
    ``[bos] rc(x) [eos] pad pad`` and packed rows keep each document in its slot.  This is an
    involution.
    """
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(np.asarray(ids))
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TokenizerError(f"token ids must be an integer tensor, got {ids.dtype}")
    if ids.ndim == 0:
        raise TokenizerError("token ids must have at least one dimension")
    vocab = complement_lut.numel()
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            flat = ids.reshape(-1)
            pos = int(torch.nonzero((flat < 0) | (flat >= vocab))[0])
            raise TokenizerError(f"token id {int(flat[pos])} at position {pos} is outside the "
                                 f"vocabulary [0, {vocab})")
    long_ids = ids.long()
    lut = complement_lut.to(ids.device)
    L = ids.shape[-1]
    frame = torch.zeros_like(long_ids, dtype=torch.bool)
    for f in FRAME_IDS:
        frame |= long_ids == f
    if not bool(frame.any()):  # plain sequences (e.g. a whole chromosome): one flip
        return lut[long_ids.flip(-1)].to(ids.dtype)
    pos = torch.arange(L, device=ids.device).expand_as(long_ids)
    # For every position: index of the nearest frame token at/before it (-1 if none) and
    # at/after it (L if none); a content position p maps to prev + next - p.
    prev_frame = torch.where(frame, pos, torch.full_like(pos, -1)).cummax(dim=-1).values
    next_frame = torch.where(frame, pos, torch.full_like(pos, L)).flip(-1).cummin(dim=-1).values.flip(-1)
    src = torch.where(frame, pos, prev_frame + next_frame - pos)
    return lut[long_ids.gather(-1, src)].to(ids.dtype)
