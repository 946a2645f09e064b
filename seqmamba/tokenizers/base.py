"""Shared machinery for every seqmamba tokenizer: the error type, the special-token layout,
batch encoding with padding/truncation, and config equality.

Subclasses implement ``_encode_parts(seq) -> (core ids, extras)`` where ``core`` is a 1-D int64
numpy array *without* bos/eos and ``extras`` maps a name to a boolean numpy array aligned with
``core`` (e.g. the soft-mask of the character tokenizer).  Keeping specials out of the core lets
truncation cut the sequence while keeping bos/eos.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

__all__ = [
    "TokenizerError", "Tokenizer", "SPECIAL_TOKENS", "PAD_ID", "BOS_ID", "EOS_ID", "MASK_ID",
    "UNK_ID", "NUM_SPECIAL_TOKENS", "as_id_array",
]


class TokenizerError(ValueError):
    """Bad input to a tokenizer (invalid character, id out of range, over-long sequence...)."""


# The DNA and byte tokenizers share this fixed prefix of the vocabulary, so pad is always 0
# (convenient for nn.Embedding(padding_idx=0)) and special ids never depend on k or the alphabet.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[UNK]")
PAD_ID, BOS_ID, EOS_ID, MASK_ID, UNK_ID = range(5)
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)

_PADDING_MODES = (True, False, "longest", "max_length", "do_not_pad")


def as_id_array(ids: Any) -> np.ndarray:
    """Token ids (tensor on any device, numpy array, list) as an int64 numpy array."""
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.is_complex():
            raise TokenizerError(f"token ids must be integers, got a {ids.dtype} tensor")
        return ids.detach().to("cpu", torch.int64).numpy()
    arr = np.asarray(ids)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TokenizerError(f"token ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_id_range(ids: np.ndarray, vocab_size: int) -> None:
    """Raise naming the first id outside [0, vocab_size) and its (flat) position."""
    if ids.size == 0 or (ids.min() >= 0 and ids.max() < vocab_size):  # two cheap reductions
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        pos = int(np.argmax(bad.reshape(-1)))
        raise TokenizerError(
            f"token id {int(ids.reshape(-1)[pos])} at position {pos} is outside the vocabulary "
            f"[0, {vocab_size})")


class Tokenizer:
    """Base class.  Subclasses set ``name`` and implement ``_encode_parts``, ``decode``,
    ``vocab_size`` and ``to_config``."""

    name: ClassVar[str] = ""
    pad_id: int = PAD_ID
    bos_id: int | None = None
    eos_id: int | None = None
    add_special_tokens: bool = False

    # ---- to implement -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_parts(self, seq: Any, **kwargs: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError  # pragma: no cover - abstract

    def to_config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- shared --------------------------------------------------------------------------
    def _prefix_suffix(self) -> tuple[list[int], list[int]]:
        if not self.add_special_tokens:
            return [], []
        pre = [self.bos_id] if self.bos_id is not None else []
        post = [self.eos_id] if self.eos_id is not None else []
        return pre, post

    def _assemble(self, core: np.ndarray, extras: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pre, post = self._prefix_suffix()
        if not pre and not post:
            return core, extras
        ids = np.concatenate([np.asarray(pre, np.int64), core, np.asarray(post, np.int64)])
        pad_f = np.zeros(len(pre), bool), np.zeros(len(post), bool)
        return ids, {k: np.concatenate([pad_f[0], v, pad_f[1]]) for k, v in extras.items()}

    def encode(self, seq: Any, **kwargs: Any) -> Any:
        """Encode one sequence to a 1-D ``torch.LongTensor`` (with bos/eos when
        ``add_special_tokens``).  Extra outputs requested through keyword options (e.g.
        ``return_soft_mask``) come back as a tuple ``(ids, extra, ...)``."""
        core, extras = self._encode_parts(seq, **kwargs)
        ids, extras = self._assemble(core, extras)
        out = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        if not extras:
            return out
        return (out, *(torch.from_numpy(np.ascontiguousarray(v)) for v in extras.values()))

    def encode_batch(self, seqs: Sequence[Any], max_length: int | None = None,
                     padding: bool | str = True, truncation: bool = False,
                     **kwargs: Any) -> dict[str, torch.Tensor]:
        """Encode several sequences into one right-padded batch.

        Returns ``{"input_ids": LongTensor (n, L), "attention_mask": BoolTensor (n, L)}`` plus
        one boolean (n, L) tensor per extra output (e.g. ``"soft_mask"``), False at specials
        and padding.  Padded positions hold ``pad_id``.

        padding: True / "longest" pads to the longest sequence; "max_length" pads to
            ``max_length``; False / "do_not_pad" requires all sequences to have equal length.
        truncation: when True, sequences longer than ``max_length`` tokens are cut at the end
            (bos/eos are kept, the sequence body is shortened); when False, a sequence longer
            than ``max_length`` is an error.
        """
        if padding not in _PADDING_MODES:
            raise TokenizerError(f"padding must be one of {_PADDING_MODES}, got {padding!r}")
        if (truncation or padding == "max_length") and max_length is None:
            raise TokenizerError("truncation=True and padding='max_length' need max_length")
        if max_length is not None and max_length < 0:
            raise TokenizerError(f"max_length must be >= 0, got {max_length}")
        if isinstance(seqs, (str, bytes)):
            raise TokenizerError("encode_batch expects a list of sequences, got a single one")
        pre, post = self._prefix_suffix()
        n_special = len(pre) + len(post)

        rows: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        for i, seq in enumerate(seqs):
            core, extras = self._encode_parts(seq, **kwargs)
            total = len(core) + n_special
            if max_length is not None and total > max_length:
                if not truncation:
                    raise TokenizerError(
                        f"sequence {i} has {total} tokens, more than max_length={max_length}; "
                        "pass truncation=True to cut it")
                keep = max_length - n_special
                if keep < 0:
                    raise TokenizerError(
                        f"max_length={max_length} cannot hold the {n_special} special tokens")
                core = core[:keep]
                extras = {k: v[:keep] for k, v in extras.items()}
            rows.append(self._assemble(core, extras))

        lengths = [len(ids) for ids, _ in rows]
        if padding in (False, "do_not_pad"):
            if len(set(lengths)) > 1:
                raise TokenizerError(
                    f"padding=False needs equal lengths, got lengths from {min(lengths)} to "
                    f"{max(lengths)} tokens")
            width = lengths[0] if lengths else 0
        elif padding == "max_length":
            width = int(max_length)  # type: ignore[arg-type]
        else:
            width = max(lengths, default=0)

        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=bool)
        extra_names = list(rows[0][1]) if rows else []
        extra_out = {k: np.zeros((len(rows), width), dtype=bool) for k in extra_names}
        for r, (ids, extras) in enumerate(rows):
            input_ids[r, :len(ids)] = ids
            attention[r, :len(ids)] = True
            for k, v in extras.items():
                extra_out[k][r, :len(ids)] = v
        out = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention)}
        out.update({k: torch.from_numpy(v) for k, v in extra_out.items()})
        return out

    # Tokenizers are compared and hashed by their config, so a checkpoint's stored tokenizer can
    # be checked against the one a user passes.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_config(), sort_keys=True))

    def __repr__(self) -> str:
        cfg = self.to_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "name")
        return f"{type(self).__name__}({args})"
