"""k-mer DNA tokenizer (overlapping or non-overlapping windows)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import (BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, SPECIAL_TOKENS, UNK_ID, Tokenizer,
                   TokenizerError, as_id_array, check_id_range)
from .dna_alphabet import (BASES, FRAME_IDS, N_CODE, check_invalid_mode, dna_codes,
                           reverse_complement, reverse_complement_segments)

__all__ = ["DNAKmerTokenizer", "TAIL_MODES"]

TAIL_MODES = ("pad", "drop", "error")
MAX_K = 8  # 4**8 = 65 536 k-mer tokens; beyond that the embedding table dominates the model


class DNAKmerTokenizer(Tokenizer):
    """Windows of ``k`` bases taken every ``stride`` bases, one token per window.

    ``stride=1`` gives overlapping k-mers (DNABERT style), ``stride=k`` (the default)
    non-overlapping ones; any ``1 <= stride <= k`` works.

    Vocabulary: ``0 [PAD] 1 [BOS] 2 [EOS] 3 [MASK] 4 [UNK]`` then the ``4**k`` k-mers in
    lexicographic order (``AA..A`` = 5, ``AA..C`` = 6, ... ``TT..T`` = 4**k + 4), so
    ``vocab_size = 4**k + 5``.  A k-mer containing N (or an IUPAC code, which means N) is [UNK],
    the one unknown-k-mer token.  Lowercase maps like uppercase; invalid characters raise
    :class:`TokenizerError` naming the character and its position (``invalid="unk"`` treats
    them as N instead).

    Tail: when the sequence length ``L`` is not ``k + m * stride`` (non-overlapping: ``L % k``
    bases left over; overlapping: only when ``L < k``), the bases after the last full window
    are handled by ``tail``:

    * ``"pad"`` (default): the tail is padded with N to one more window, which encodes as
      [UNK].  No base silently disappears (the token count is ``ceil``), valid DNA never
      raises; the price is that the tail bases are reported as unknown.
    * ``"drop"``: the tail is ignored (token count is ``floor``).
    * ``"error"``: raise :class:`TokenizerError` (for pipelines that guarantee fitting chunks).

    ``decode`` rebuilds the sequence from the windows: each position takes its base from the
    last known k-mer covering it and is N where no known k-mer covers it (so an N-free
    overlapping or non-overlapping stream decodes back exactly; a padded tail decodes as N).
    pad/bos/eos are ignored by decode; [MASK]/[UNK] count as unknown windows.

    Encoding is vectorised: ``k`` numpy passes over the whole sequence, whatever its length.
    """

    name = "dna_kmer"

    def __init__(self, k: int = 6, stride: int | None = None, tail: str = "pad",
                 add_special_tokens: bool = False, invalid: str = "error") -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise TokenizerError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        stride = int(k) if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= k:
            raise TokenizerError(f"stride must be an integer from 1 to k={k}, got {stride!r}")
        if tail not in TAIL_MODES:
            raise TokenizerError(f"tail must be one of {TAIL_MODES}, got {tail!r}")
        self.k, self.stride, self.tail = int(k), int(stride), tail
        self.add_special_tokens = bool(add_special_tokens)
        self.invalid = check_invalid_mode(invalid)
        self.bos_id, self.eos_id = BOS_ID, EOS_ID
        self._shifts = np.array([2 * (self.k - 1 - j) for j in range(self.k)], dtype=np.int64)
        self._complement_lut = self._build_complement_lut()

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL_TOKENS + 4 ** self.k

    def _digits(self, values: np.ndarray) -> np.ndarray:
        """k-mer indices (n,) -> base codes (n, k), most significant (first base) first."""
        return (values[:, None] >> self._shifts[None, :]) & 3

    def _build_complement_lut(self) -> torch.Tensor:
        kmers = np.arange(4 ** self.k, dtype=np.int64)
        rc_digits = 3 - self._digits(kmers)[:, ::-1]  # complement A0<->T3, C1<->G2, reversed
        rc = (rc_digits << self._shifts[None, :]).sum(axis=1)
        lut = np.concatenate([np.arange(NUM_SPECIAL_TOKENS), rc + NUM_SPECIAL_TOKENS])
        return torch.from_numpy(lut.astype(np.int64))

    def token_to_id(self, token: str) -> int:
        """Id of a special token name or of a k-mer string (one with N/IUPAC -> [UNK])."""
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        if len(token) != self.k:
            raise TokenizerError(f"{token!r} is not a {self.k}-mer")
        ids = self._encode_parts(token)[0]
        return int(ids[0])

    def id_to_token(self, i: int) -> str:
        check_id_range(np.asarray([i]), self.vocab_size)
        if i < NUM_SPECIAL_TOKENS:
            return SPECIAL_TOKENS[i]
        return "".join(BASES[d] for d in self._digits(np.asarray([i - NUM_SPECIAL_TOKENS]))[0])

    def _encode_parts(self, seq: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        codes = dna_codes(seq, self.invalid)  # int8, 0..3 ACGT, >= 4 unknown
        k, s, L = self.k, self.stride, len(codes)
        n = (L - k) // s + 1 if L >= k else 0
        leftover = L - ((n - 1) * s + k) if n else L
        if leftover:
            if self.tail == "error":
                raise TokenizerError(
                    f"sequence of length {L} leaves {leftover} trailing bases that do not fill a "
                    f"{k}-mer (stride {s}); use tail='pad' or tail='drop', or a fitting length")
            if self.tail == "pad":
                codes = np.concatenate([codes, np.full(self._pad_count(L), N_CODE, np.int8)])
                n += 1
        if n == 0:
            return np.zeros(0, np.int64), {}
        span = (n - 1) * s + 1
        # Horner's rule over the k offsets: each pass is one strided slice of the whole sequence.
        value = np.zeros(n, dtype=np.int32)
        unknown = np.zeros(n, dtype=bool)
        for j in range(k):
            c = codes[j:j + span:s]
            np.left_shift(value, 2, out=value)
            np.bitwise_or(value, c & 3, out=value, casting="unsafe")
            unknown |= c >= N_CODE
        ids = value.astype(np.int64)
        ids += NUM_SPECIAL_TOKENS
        ids[unknown] = UNK_ID
        return ids, {}

    def _pad_count(self, L: int) -> int:
        """N bases to append so the tail fills exactly one more window."""
        if L < self.k:
            return self.k - L
        return (-(L - self.k)) % self.stride

    def decode(self, ids: Any) -> str | list[str]:
        """Ids -> uppercase sequence (see class doc).  A 2-D input gives one string per row."""
        arr = as_id_array(ids)
        if arr.ndim == 2:
            return [self.decode(row) for row in arr]
        if arr.ndim != 1:
            raise TokenizerError(f"decode expects 1-D or 2-D ids, got shape {arr.shape}")
        check_id_range(arr, self.vocab_size)
        if arr.size and arr.min() <= max(FRAME_IDS):  # skip the filter for plain streams
            arr = arr[~np.isin(arr, FRAME_IDS)]
        n = len(arr)
        if n == 0:
            return ""
        k, s = self.k, self.stride
        known = arr >= NUM_SPECIAL_TOKENS
        values = arr - NUM_SPECIAL_TOKENS
        out = np.full((n - 1) * s + k, N_CODE, dtype=np.uint8)
        if known.all():
            # Every window known: the last window covering position i*s + j (j < s) is window i,
            # and the final window covers the rest, so s passes suffice (1 when overlapping).
            for j in range(s):
                out[j:n * s:s] = (values >> int(self._shifts[j])) & 3
            out[(n - 1) * s:] = self._digits(values[-1:])[0]
            return np.frombuffer(BASES.encode(), np.uint8)[out].tobytes().decode("ascii")
        # Otherwise one pass per offset j, from k-1 down to 0, so that the base written last at a
        # position comes from the last known window covering it (as above); N where none does.
        starts = np.flatnonzero(known) * s
        values = values[known]
        for j in reversed(range(k)):
            out[starts + j] = (values >> int(self._shifts[j])) & 3
        return np.frombuffer(BASES.encode(), np.uint8)[out].tobytes().decode("ascii")

    def reverse_complement(self, seq: Any) -> str:
        """Reverse complement of a DNA string (case and IUPAC codes preserved)."""
        return reverse_complement(seq)

    def reverse_complement_ids(self, ids: Any) -> torch.Tensor:
        """Reverse complement token ids along the last dim (any leading dims): the token order
        is reversed and each k-mer becomes the token of its reverse-complement k-mer; [UNK] and
        [MASK] stay themselves; pad/bos/eos stay in place.  For overlapping k-mers (and for
        non-overlapping ones when the length is a multiple of k) this equals
        ``encode(reverse_complement(s))``."""
        return reverse_complement_segments(ids, self._complement_lut)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "stride": self.stride, "tail": self.tail,
                "add_special_tokens": self.add_special_tokens, "invalid": self.invalid}
