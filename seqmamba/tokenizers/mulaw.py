"""mu-law audio tokenizer (SaShiMi/WaveNet style 8-bit quantisation of waveforms)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Tokenizer, TokenizerError

__all__ = ["MuLawTokenizer"]

MIN_BITS, MAX_BITS = 2, 16


def _torchaudio_functional():
    # Imported on first use: torchaudio pulls in dozens of modules, and DNA users never need it.
    try:
        import torchaudio.functional as F
    except ImportError as e:  # pragma: no cover - torchaudio is a declared dependency
        raise TokenizerError(f"MuLawTokenizer needs torchaudio ({e})") from e
    return F


class MuLawTokenizer(Tokenizer):
    """mu-law companding + uniform quantisation of float waveforms to ``2**bits`` levels
    (``torchaudio.functional.mu_law_encoding`` with ``mu = 2**bits - 1``).

    * ids ``0 .. 2**bits - 1`` are exactly torchaudio's codes (silence is ``2**(bits-1)``,
      rounded); ``pad_id = 2**bits`` comes after them, so ``vocab_size = 2**bits + 1`` and no
      quantisation level doubles as padding.  There are no bos/eos tokens.
    * Input samples outside [-1, 1] are **clipped** to [-1, 1] (loud clips are common in real
      audio; rejecting them would make whole datasets unusable).  NaN/inf raise
      :class:`TokenizerError`.  Integer PCM must be scaled to float first.
    * ``encode`` keeps the input's shape and device (any number of dims); ``encode_batch``
      takes 1-D waveforms.  ``decode`` returns float32 in [-1, 1]; the round-trip error is
      at most ``(|x| + 1/mu) * ((1 + mu)**(1/mu) - 1)`` (about 2.2 % of |x| + 1e-4 for 8 bits).
    """

    name = "mulaw"

    def __init__(self, bits: int = 8) -> None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
            raise TokenizerError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
        self.bits = int(bits)
        self.levels = 2 ** self.bits
        self.pad_id = self.levels

    @property
    def vocab_size(self) -> int:
        return self.levels + 1

    @staticmethod
    def _as_waveform(x: Any) -> torch.Tensor:
        if isinstance(x, (str, bytes)):  # e.g. a DNA sequence handed to an audio model
            raise TokenizerError("the mu-law tokenizer encodes audio waveforms (floats in [-1, 1]), "
                                 f"not text; got {type(x).__name__} {x[:20]!r}")
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if not t.is_floating_point():
            raise TokenizerError(
                f"mu-law encoding expects a float waveform in [-1, 1], got dtype {t.dtype}")
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            pos = int(torch.nonzero(~finite.reshape(-1))[0])
            raise TokenizerError(f"waveform has a non-finite sample ({float(t.reshape(-1)[pos])}) "
                                 f"at position {pos}")
        return t

    def encode(self, waveform: Any) -> torch.Tensor:  # type: ignore[override]
        """Float waveform (any shape) -> LongTensor of the same shape, values in [0, 2**bits)."""
        t = self._as_waveform(waveform)
        # fp16/bf16 lose too much precision near +-1 for 16-bit codes; compute in fp32 at least.
        t = t.to(torch.promote_types(t.dtype, torch.float32)).clamp(-1.0, 1.0)
        return _torchaudio_functional().mu_law_encoding(t, self.levels).long()

    def _encode_parts(self, seq: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ids = self.encode(seq)
        if ids.ndim != 1:
            raise TokenizerError(f"encode_batch expects 1-D waveforms, got shape {tuple(ids.shape)}")
        return ids.cpu().numpy(), {}

    def decode(self, ids: Any) -> torch.Tensor:
        """Codes (any shape, any integer dtype) -> float32 waveform of the same shape.
        ``pad_id`` or any other id outside the levels raises (drop padding with the
        attention mask first)."""
        t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids))
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TokenizerError(f"mu-law codes must be integers, got {t.dtype}")
        if t.numel():
            bad = (t < 0) | (t >= self.levels)
            if bool(bad.any()):
                pos = int(torch.nonzero(bad.reshape(-1))[0])
                raise TokenizerError(
                    f"mu-law code {int(t.reshape(-1)[pos])} at position {pos} is outside "
                    f"[0, {self.levels}) (pad_id={self.pad_id} cannot be decoded)")
        out = _torchaudio_functional().mu_law_decoding(t.long(), self.levels)
        return out.to(torch.float32)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits}
