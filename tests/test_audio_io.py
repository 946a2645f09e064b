"""Tests for seqmamba.audio_io: load (mono mix, resample), atomic save, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from seqmamba.audio_io import AudioError, load_audio, save_audio


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(wave: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wave.double()).abs()
    return float(torch.argmax(spectrum)) * sr / len(wave)


def test_load_mono_wav_same_rate(tmp_path):
    x = sine(440, 16000, 0.5)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    wave, sr = load_audio(tmp_path / "a.wav")
    assert sr == 16000 and wave.dtype == torch.float32 and wave.shape == (8000,)
    assert np.abs(wave.numpy() - x).max() < 1e-4  # PCM_16 quantisation only


def test_load_stereo_44k_mixes_and_resamples(tmp_path):
    left, right = sine(440, 44100, 1.0, 0.6), sine(1000, 44100, 1.0, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 44100)
    wave, sr = load_audio(tmp_path / "s.wav", sample_rate=16000)
    assert sr == 16000 and wave.ndim == 1 and wave.dtype == torch.float32
    assert abs(len(wave) - 16000) <= 1
    assert abs(dominant_frequency(wave, 16000) - 440) <= 2  # the louder channel survives the mix
    native, native_sr = load_audio(tmp_path / "s.wav", sample_rate=None)
    assert native_sr == 44100 and len(native) == 44100
    mono = (left + right) / 2
    assert np.abs(native.numpy() - mono).max() < 1e-4  # mix = channel mean


@pytest.mark.parametrize("ext", [".flac", ".ogg"])
def test_save_load_other_formats(tmp_path, ext):
    x = torch.from_numpy(sine(300, 16000, 0.25))
    path = save_audio(tmp_path / f"x{ext}", x, 16000)
    wave, sr = load_audio(path)
    assert sr == 16000 and abs(len(wave) - len(x)) <= 1
    n = min(len(wave), len(x))
    tol = 1e-4 if ext == ".flac" else 0.1  # vorbis is lossy
    assert float((wave[:n] - x[:n]).abs().max()) < tol


def test_save_is_atomic_and_handles_channels(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"old content")
    stereo = torch.stack([torch.full((100,), 0.25), torch.full((100,), 2.0)])  # (C, L)
    save_audio(target, stereo, 8000)
    data, sr = sf.read(target, always_2d=True)
    assert sr == 8000 and data.shape == (100, 2)
    assert np.allclose(data[:, 0], 0.25, atol=1e-4) and np.allclose(data[:, 1], 1.0, atol=1e-4)  # clipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no temp file left


@pytest.mark.parametrize("name, wave, rate, msg", [
    ("x.xyz", np.zeros(10, np.float32), 16000, "unsupported audio extension"),
    ("x.wav", np.array([0.0, np.nan], np.float32), 16000, "NaN"),
    ("x.wav", np.zeros(0, np.float32), 16000, "empty"),
    ("x.wav", np.zeros((1, 2, 3), np.float32), 16000, "shape"),
    ("x.wav", np.zeros(10, np.float32), 0, "sample_rate"),
])
def test_save_bad_input_writes_nothing(tmp_path, name, wave, rate, msg):
    with pytest.raises(AudioError, match=msg) as err:
        save_audio(tmp_path / name, wave, rate)
    assert name in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC\x00\x01garbage" * 10)
    silent = tmp_path / "noframes.wav"
    sf.write(silent, np.zeros(0, np.float32), 16000)
    for path, msg in [(empty, "cannot read audio"), (corrupt, "cannot read audio"),
                      (silent, "no audio samples"), (tmp_path / "missing.wav", "no such audio file"),
                      (tmp_path, "not a file")]:
        with pytest.raises(AudioError, match=msg) as err:
            load_audio(path)
        assert str(path) in str(err.value)
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(empty, sample_rate=-1)
    assert issubclass(AudioError, ValueError)


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        save_audio(tmp_path / "nope" / "x.wav", np.zeros(10, np.float32), 8000)
    assert list(tmp_path.iterdir()) == []
