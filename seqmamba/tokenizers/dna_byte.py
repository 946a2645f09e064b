"""Raw-byte tokenizer: no biology assumptions, every byte is a token."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import (BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, SPECIAL_TOKENS, Tokenizer,
                   TokenizerError, as_id_array, check_id_range)
from .dna_alphabet import COMPLEMENT_BYTES, reverse_complement, reverse_complement_segments

__all__ = ["DNAByteTokenizer"]


class DNAByteTokenizer(Tokenizer):
    """One token per byte: ``id = byte + 5`` after the shared specials
    ``0 [PAD] 1 [BOS] 2 [EOS] 3 [MASK] 4 [UNK]``; ``vocab_size = 261``.

    Strings are encoded as UTF-8, bytes-like input is taken as is; nothing is validated,
    upper- and lowercase stay distinct, so soft-masking is kept in the tokens themselves.
    ``decode`` returns a ``str`` (UTF-8, undecodable bytes become U+FFFD) or, with
    ``as_bytes=True``, the exact bytes.

    Reverse complement: ``reverse_complement(str)`` is the strict DNA one (invalid characters
    raise).  ``reverse_complement_ids`` complements the byte of every nucleotide letter
    (ACGTN and IUPAC codes, case kept) and leaves every other byte as it is, so it is total and
    an involution; pad/bos/eos stay in place.
    """

    name = "dna_byte"

    def __init__(self, add_special_tokens: bool = False) -> None:
        self.add_special_tokens = bool(add_special_tokens)
        self.bos_id, self.eos_id = BOS_ID, EOS_ID
        comp_bytes = np.frombuffer(COMPLEMENT_BYTES, dtype=np.uint8).astype(np.int64)
        lut = np.concatenate([np.arange(NUM_SPECIAL_TOKENS), comp_bytes + NUM_SPECIAL_TOKENS])
        self._complement_lut = torch.from_numpy(lut)

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL_TOKENS + 256

    def id_to_token(self, i: int) -> str:
        check_id_range(np.asarray([i]), self.vocab_size)
        return SPECIAL_TOKENS[i] if i < NUM_SPECIAL_TOKENS else repr(bytes([i - NUM_SPECIAL_TOKENS]))

    def _encode_parts(self, seq: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if isinstance(seq, str):
            raw = np.frombuffer(seq.encode("utf-8"), dtype=np.uint8)
        elif isinstance(seq, (bytes, bytearray, memoryview)):
            raw = np.frombuffer(seq, dtype=np.uint8)
        elif isinstance(seq, np.ndarray) and seq.dtype == np.uint8 and seq.ndim == 1:
            raw = seq
        elif hasattr(type(seq), "__bytes__"):
            raw = np.frombuffer(bytes(seq), dtype=np.uint8)
        else:
            raise TokenizerError(f"expected str or bytes, got {type(seq).__name__}")
        return raw.astype(np.int64) + NUM_SPECIAL_TOKENS, {}

    def decode(self, ids: Any, skip_special_tokens: bool = True, as_bytes: bool = False
               ) -> str | bytes | list:
        """Ids -> str (or bytes).  Special tokens are dropped, or kept as ``[MASK]``-style
        names when ``skip_special_tokens=False`` (str output only).  2-D ids give a list."""
        arr = as_id_array(ids)
        if arr.ndim == 2:
            return [self.decode(row, skip_special_tokens, as_bytes) for row in arr]
        if arr.ndim != 1:
            raise TokenizerError(f"decode expects 1-D or 2-D ids, got shape {arr.shape}")
        check_id_range(arr, self.vocab_size)
        special = arr < NUM_SPECIAL_TOKENS
        if skip_special_tokens or not special.any():
            data = (arr[~special] - NUM_SPECIAL_TOKENS).astype(np.uint8).tobytes()
            return data if as_bytes else data.decode("utf-8", errors="replace")
        if as_bytes:
            raise TokenizerError("as_bytes=True cannot represent special tokens; "
                                 "use skip_special_tokens=True")
        # Decode each run of bytes between specials separately so multi-byte characters survive.
        parts: list[str] = []
        run: list[int] = []
        for i in arr.tolist():
            if i < NUM_SPECIAL_TOKENS:
                parts.append(bytes(run).decode("utf-8", errors="replace"))
                parts.append(SPECIAL_TOKENS[i])
                run = []
            else:
                run.append(i - NUM_SPECIAL_TOKENS)
        parts.append(bytes(run).decode("utf-8", errors="replace"))
        return "".join(parts)

    def reverse_complement(self, seq: Any) -> str:
        """Reverse complement of a DNA string (case and IUPAC codes preserved; invalid raises)."""
        return reverse_complement(seq)

    def reverse_complement_ids(self, ids: Any) -> torch.Tensor:
        """See the class doc: nucleotide bytes complemented, others unchanged, pad/bos/eos fixed."""
        return reverse_complement_segments(ids, self._complement_lut)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "add_special_tokens": self.add_special_tokens}
