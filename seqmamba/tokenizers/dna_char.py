"""Single-nucleotide DNA tokenizer (one token per base)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import (BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, SPECIAL_TOKENS, UNK_ID, Tokenizer,
                   TokenizerError, as_id_array, check_id_range)
from .dna_alphabet import (BASES, CODE_OF_BYTE, INVALID_CODE, check_invalid_mode, dna_codes,
                           reverse_complement, reverse_complement_segments, soft_mask,
                           to_byte_array)

__all__ = ["DNACharTokenizer"]


class DNACharTokenizer(Tokenizer):
    """One token per nucleotide.

    Vocabulary (fixed, 10 ids)::

        0 [PAD]  1 [BOS]  2 [EOS]  3 [MASK]  4 [UNK]  5 A  6 C  7 G  8 T  9 N

    * Lowercase (soft-masked repeats) maps to the same ids as uppercase; ask for the soft mask
      with ``encode(seq, return_soft_mask=True)`` -> ``(ids, mask)`` (bool, True = lowercase,
      False at bos/eos) or ``encode_batch(..., return_soft_mask=True)`` -> key ``"soft_mask"``.
    * IUPAC ambiguity codes R Y K M S W B D H V map to N.
    * Any other character raises :class:`TokenizerError` naming it and its 0-based position;
      with ``invalid="unk"`` it becomes [UNK] instead.
    * ``add_special_tokens=True`` wraps each sequence in [BOS] ... [EOS].

    ``decode`` returns uppercase ACGTN; ``decode(encode(s)) == s`` for any uppercase ACGTN
    string.  Whole chromosomes are encoded with one byte lookup table (no per-base Python).
    """

    name = "dna_char"
    # id = base code + offset; the last entry (INVALID_CODE) is where invalid="unk" lands.
    _ID_OF_CODE = np.array([NUM_SPECIAL_TOKENS + i for i in range(len(BASES))] + [UNK_ID],
                           dtype=np.int64)
    assert len(_ID_OF_CODE) == INVALID_CODE + 1
    _ID_OF_BYTE = np.where(CODE_OF_BYTE >= 0, _ID_OF_CODE[CODE_OF_BYTE], -1).astype(np.int64)
    _DECODE_BYTES = np.frombuffer(b"\0" * NUM_SPECIAL_TOKENS + BASES.encode(), dtype=np.uint8)

    def __init__(self, add_special_tokens: bool = False, invalid: str = "error") -> None:
        self.add_special_tokens = bool(add_special_tokens)
        self.invalid = check_invalid_mode(invalid)
        self.bos_id, self.eos_id = BOS_ID, EOS_ID
        comp = list(range(self.vocab_size))
        a, c, g, t = (NUM_SPECIAL_TOKENS + BASES.index(b) for b in "ACGT")
        comp[a], comp[t], comp[c], comp[g] = t, a, g, c
        self._complement_lut = torch.tensor(comp, dtype=torch.long)

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL_TOKENS + len(BASES)

    def token_to_id(self, token: str) -> int:
        """Id of a special token name (``"[MASK]"``) or of one base letter (IUPAC codes -> N)."""
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        if len(token) != 1:
            raise TokenizerError(f"{token!r} is not a token of dna_char")
        return int(self._ID_OF_CODE[dna_codes(token)[0]])

    def id_to_token(self, i: int) -> str:
        check_id_range(np.asarray([i]), self.vocab_size)
        return SPECIAL_TOKENS[i] if i < NUM_SPECIAL_TOKENS else BASES[i - NUM_SPECIAL_TOKENS]

    def _encode_parts(self, seq: Any, return_soft_mask: bool = False
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        arr = to_byte_array(seq)
        ids = self._ID_OF_BYTE[arr]  # one lookup from bytes straight to ids
        if ids.size and ids.min() < 0:  # invalid bytes: error with position, or [UNK]
            ids = self._ID_OF_CODE[dna_codes(arr, self.invalid)]
        extras = {"soft_mask": soft_mask(arr)} if return_soft_mask else {}
        return ids, extras

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str | list[str]:
        """Ids -> uppercase string.  A 2-D input gives one string per row.  Special tokens are
        dropped (``skip_special_tokens=True``) or written as ``[PAD]``, ``[MASK]``..."""
        arr = as_id_array(ids)
        if arr.ndim == 2:
            return [self.decode(row, skip_special_tokens) for row in arr]
        if arr.ndim != 1:
            raise TokenizerError(f"decode expects 1-D or 2-D ids, got shape {arr.shape}")
        check_id_range(arr, self.vocab_size)
        if arr.size == 0 or arr.min() >= NUM_SPECIAL_TOKENS:  # no specials: skip the masking
            return self._DECODE_BYTES[arr].tobytes().decode("ascii")
        if skip_special_tokens:
            return self._DECODE_BYTES[arr[arr >= NUM_SPECIAL_TOKENS]].tobytes().decode("ascii")
        return "".join(SPECIAL_TOKENS[i] if i < NUM_SPECIAL_TOKENS else BASES[i - NUM_SPECIAL_TOKENS]
                       for i in arr.tolist())

    def reverse_complement(self, seq: Any) -> str:
        """Reverse complement of a DNA string (case and IUPAC codes preserved)."""
        return reverse_complement(seq)

    def reverse_complement_ids(self, ids: Any) -> torch.Tensor:
        """Reverse complement token ids along the last dim (any leading dims): A<->T, C<->G,
        N->N; pad/bos/eos stay in place, [MASK]/[UNK] move with the bases and stay unchanged.
        Equals ``encode(reverse_complement(s))`` for a sequence without padding."""
        return reverse_complement_segments(ids, self._complement_lut)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "add_special_tokens": self.add_special_tokens,
                "invalid": self.invalid}

