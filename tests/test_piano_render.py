"""The offline piano corpus: additive synthesis (no extra package), music21 scores -> WAV, the
`seqmamba data piano` command and its errors."""
import importlib.util
import shutil

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from seqmamba.data import piano_render as pr


def test_additive_note_has_its_pitch_and_decays():
    sr = 16000
    wav = pr.synthesize_additive([pr.NoteEvent(0.0, 1.0, 69, 90)], sr=sr)  # A4, one second
    assert wav.dtype == np.float32 and abs(float(np.abs(wav).max()) - 0.8) < 1e-6
    spec = np.abs(np.fft.rfft(wav[: sr // 2] * np.hanning(sr // 2)))
    peak_hz = np.argmax(spec) * sr / (sr // 2)
    assert abs(peak_hz - 440) < 4
    early, late = np.abs(wav[:1600]).max(), np.abs(wav[14400:16000]).max()
    assert late < 0.7 * early  # struck string: the sound decays while the key is held
    # After key-up the damper stops it quickly.
    assert np.abs(wav[int(1.4 * sr):]).max() < 0.05 * early


def test_additive_is_deterministic_and_polyphonic():
    notes = [pr.NoteEvent(0.0, 0.5, 60, 80), pr.NoteEvent(0.0, 0.5, 64, 80),
             pr.NoteEvent(0.25, 0.5, 67, 100)]
    a, b = pr.synthesize_additive(notes), pr.synthesize_additive(notes)
    assert np.array_equal(a, b) and len(a) > 0.75 * 16000


def test_missing_fluidsynth_is_explained(monkeypatch):
    monkeypatch.setattr(pr.shutil, "which", lambda name: None)
    with pytest.raises(pr.PianoRenderError, match="apt-get install fluidsynth"):
        pr.choose_synth("fluidsynth")
    assert pr.choose_synth("auto") == ("additive", None)
    with pytest.raises(pr.PianoRenderError, match="--synth must be one of"):
        pr.choose_synth("organ")


# Only the score-based tests need music21; the synthesis tests above run without it.
needs_music21 = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                   reason="the piano corpus needs music21 (seqmamba[audio])")


@needs_music21
def test_render_one_short_piece(tmp_path):
    out = tmp_path / "piano"
    summary = pr.render_corpus(out, synth="additive", max_seconds=4.0, pieces=["bach/bwv104.6"])
    assert summary["files"] == 1 and summary["synth"] == "additive"
    wav, sr = sf.read(out / "000_bach_bwv104_6.wav")
    assert sr == 16000 and wav.ndim == 1 and 3.5 < len(wav) / sr < 6.0
    assert 0.7 < np.abs(wav).max() <= 0.81
    provenance = (out / "PROVENANCE.md").read_text()
    assert "additive" in provenance and "music21" in provenance
    assert (out / "manifest.tsv").read_text().splitlines()[1].split("\t")[1] == "bach/bwv104.6"
    # The folder now holds a corpus: rendering into it again needs --overwrite.
    with pytest.raises(pr.PianoRenderError, match="--overwrite"):
        pr.render_corpus(out, synth="additive", pieces=["bach/bwv104.6"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@needs_music21
def test_bad_piece_is_skipped_and_counted(tmp_path):
    summary = pr.render_corpus(tmp_path / "p", synth="additive", max_seconds=2.0,
                               pieces=["no/such_piece", "bach/bwv104.6"])
    assert summary["files"] == 1 and len(summary["skipped"]) == 1
    with pytest.raises(pr.PianoRenderError, match="no piece could be rendered"):
        pr.render_corpus(tmp_path / "q", synth="additive", pieces=["no/such_piece"])
    assert not (tmp_path / "q").exists()


@needs_music21
def test_piece_list_starts_with_solo_piano():
    pieces = pr.list_pieces(12)
    assert pieces[:len(pr.SOLO_PIANO_WORKS)] == list(pr.SOLO_PIANO_WORKS)
    assert pieces[-1].startswith("bach/bwv")


@needs_music21
def test_cli(tmp_path):
    from seqmamba.cli import app

    out = tmp_path / "corpus"
    r = CliRunner().invoke(app, ["data", "piano", "--out", str(out), "--max-pieces", "1",
                                 "--max-seconds", "2", "--synth", "additive"])
    assert r.exit_code == 0, r.output
    assert "wrote 1 pieces" in r.output and len(list(out.glob("*.wav"))) == 1
    r = CliRunner().invoke(app, ["data", "piano", "--out", str(out), "--synth", "organ"])
    assert r.exit_code == 1 and "error:" in r.output


@needs_music21
@pytest.mark.skipif(not (shutil.which("fluidsynth") and pr.find_soundfont()),
                    reason="fluidsynth and a General MIDI SoundFont are not installed")
def test_fluidsynth_render(tmp_path):
    summary = pr.render_corpus(tmp_path / "fs", synth="fluidsynth", max_seconds=3.0,
                               pieces=["bach/bwv104.6"])
    assert summary["synth"] == "fluidsynth"
    wav, sr = sf.read(next((tmp_path / "fs").glob("*.wav")))
    assert sr == 16000 and wav.ndim == 1 and len(wav) > sr
