"""Reading and writing audio files (WAV, FLAC, OGG...) with soundfile.

Waveforms are float32 torch tensors in [-1, 1].  ``load_audio`` mixes down to mono and
resamples with ``torchaudio.functional.resample``; ``save_audio`` writes atomically (a temporary
file in the target folder, then a rename) so a crash never leaves a half-written file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic_io import atomic_output

__all__ = ["AudioError", "load_audio", "save_audio"]


class AudioError(ValueError):
    """An audio file cannot be read or written; the message names the file."""


def _soundfile():
    import soundfile as sf  # deferred: loads libsndfile, only needed for audio users
    return sf


def _is_rate(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0


def load_audio(path: str | os.PathLike, sample_rate: int | None = 16000) -> tuple[torch.Tensor, int]:
    """Read an audio file as a mono float32 waveform of shape (L,).

    Channels are averaged.  When ``sample_rate`` is given and differs from the file's, the
    waveform is resampled to it; ``sample_rate=None`` keeps the file's rate.  Returns
    ``(waveform, sample_rate)``.  Raises :class:`AudioError` naming the file when it is missing,
    corrupt, empty (no samples) or holds non-finite samples.
    """
    if sample_rate is not None and not _is_rate(sample_rate):
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{p}: no such audio file" if not p.exists() else f"{p}: not a file")
    sf = _soundfile()
    try:
        data, file_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{p}: cannot read audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{p}: contains no audio samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)))
    if not bool(torch.isfinite(wave).all()):
        raise AudioError(f"{p}: contains NaN or infinite samples")
    if sample_rate is not None and int(sample_rate) != file_rate:
        from torchaudio.functional import resample  # deferred: torchaudio import is slow
        wave = resample(wave, orig_freq=int(file_rate), new_freq=int(sample_rate))
        return wave.contiguous(), int(sample_rate)
    return wave, int(file_rate)


def save_audio(path: str | os.PathLike, waveform: Any, sample_rate: int,
               subtype: str | None = None) -> Path:
    """Write a waveform (tensor or array, shape (L,) or channels-first (C, L)) to ``path``.

    The format comes from the extension (``.wav``, ``.flac``, ``.ogg``...); ``subtype`` picks the
    sample encoding (soundfile's default otherwise, e.g. PCM_16 for WAV).  Samples outside
    [-1, 1] are clipped unless the subtype is FLOAT or DOUBLE.  The file appears only once
    fully written.  Returns the path.
    """
    sf = _soundfile()
    p = Path(path)
    fmt = p.suffix[1:].upper()
    if fmt not in sf.available_formats():
        raise AudioError(f"{p}: unsupported audio extension {p.suffix!r} "
                         f"(use one of .wav, .flac, .ogg)")
    if not _is_rate(sample_rate):
        raise AudioError(f"{p}: sample_rate must be a positive integer, got {sample_rate!r}")
    if isinstance(waveform, torch.Tensor):
        data = waveform.detach().to("cpu", torch.float32).numpy()
    else:
        data = np.asarray(waveform, dtype=np.float32)
    if data.ndim == 2:
        data = data.T  # (C, L) -> soundfile's (frames, channels)
    elif data.ndim != 1:
        raise AudioError(f"{p}: waveform must have shape (L,) or (C, L), got {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise AudioError(f"{p}: refusing to write an empty waveform")
    if not np.isfinite(data).all():
        raise AudioError(f"{p}: waveform contains NaN or infinite samples")
    if not p.parent.is_dir():
        raise AudioError(f"{p}: folder {p.parent} does not exist")
    if subtype is not None and not sf.check_format(fmt, subtype):
        raise AudioError(f"{p}: subtype {subtype!r} is not valid for {fmt}")
    if (subtype or sf.default_subtype(fmt)) not in ("FLOAT", "DOUBLE"):
        data = np.clip(data, -1.0, 1.0)

    # Same folder as the target so the rename is atomic (same filesystem).
    try:
        with atomic_output(p) as tmp:
            sf.write(str(tmp), np.ascontiguousarray(data), int(sample_rate), format=fmt,
                     subtype=subtype)
    except (sf.SoundFileError, RuntimeError, OSError, TypeError, ValueError) as e:
        raise AudioError(f"{p}: cannot write audio ({e})") from e
    return p
