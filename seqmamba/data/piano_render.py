"""Render an offline solo-piano corpus: scores from music21's bundled corpus -> 16 kHz mono WAV.

Why: YouTubeMix (the paper's piano set) must be downloaded; this corpus needs no internet, so the
piano demo, tests and baselines run anywhere.  ``seqmamba data piano --out DIR`` calls
:func:`render_corpus`.

Scores: music21 ships its corpus inside the PyPI wheel (about 20 MB; ``pip install
'seqmamba[audio]'``).  We take its solo keyboard works first, then Bach's four-part chorales
(playable on a piano), all played with a piano sound.

Synths (the one used is written to the folder's PROVENANCE.md and manifest.tsv):

* ``fluidsynth``: the FluidSynth program with a General MIDI SoundFont (a sampled grand piano).
  Debian/Ubuntu: ``apt-get install fluidsynth fluid-soundfont-gm`` (or the 6 MB
  ``timgm6mb-soundfont``).
* ``additive``: pure numpy, works everywhere.  Each note is a sum of string partials with piano
  inharmonicity (f_k = k f0 sqrt(1 + B k^2)), a hammer-position comb and a velocity-dependent
  brightness, a two-stage (prompt + aftersound) exponential decay that is faster for high notes
  and high partials, slight two-string detuning (beats), a short attack, a damper release and a
  brief hammer noise.  It is piano-like, not a piano sample.

``auto`` picks fluidsynth when the program and a GM SoundFont are found, else additive.
"""
from __future__ import annotations

import datetime
import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "PianoRenderError", "NoteEvent", "SOLO_PIANO_WORKS", "DEFAULT_SAMPLE_RATE", "require_music21",
    "find_soundfont", "fluidsynth_available", "choose_synth", "list_pieces", "score_to_notes",
    "synthesize_additive", "render_piece", "render_corpus",
]

DEFAULT_SAMPLE_RATE = 16000
# music21 corpus paths of works written for solo keyboard; the corpus has few, so the chorales
# (below) supply the bulk.
SOLO_PIANO_WORKS: tuple[str, ...] = (
    "joplin/maple_leaf_rag",
    "chopin/mazurka06-2",
    "mozart/k545/movement1_exposition",
    "schumann_clara/polonaise_op1n1",
    "schumann_clara/polonaise_op1n2",
    "schumann_clara/polonaise_op1n3",
    "schumann_clara/polonaise_op1n4",
    "cpebach/h186",
    "schoenberg/opus19/movement2",
    "schoenberg/opus19/movement6",
)
# Scores without a tempo mark (most chorales) are played at this many quarter notes per minute.
DEFAULT_QPM = 76.0
# Where Debian/Ubuntu/Fedora/Homebrew put General MIDI SoundFonts.
_SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
SYNTHS = ("auto", "fluidsynth", "additive")
INSTALL_AUDIO_EXTRA = "pip install 'seqmamba[audio]'  (or: pip install music21)"
INSTALL_FLUIDSYNTH = "apt-get install fluidsynth fluid-soundfont-gm  (Debian/Ubuntu)"


class PianoRenderError(RuntimeError):
    """A problem the user can fix (missing package, bad option, unusable output folder)."""


@dataclass(frozen=True)
class NoteEvent:
    onset: float      # seconds
    duration: float   # seconds (key held)
    pitch: int        # MIDI note number
    velocity: int     # 1..127


# ---- dependencies ----------------------------------------------------------------------------
def require_music21():
    try:
        import music21  # noqa: F401
    except ImportError as e:
        raise PianoRenderError(f"the piano corpus needs music21: {INSTALL_AUDIO_EXTRA}") from e
    return music21


def find_soundfont(explicit: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The SoundFont to use: ``explicit``, $SEQMAMBA_SOUNDFONT, or a standard GM install path."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise PianoRenderError(f"soundfont not found: {path}")
        return path
    env = os.environ.get("SEQMAMBA_SOUNDFONT")
    if env:
        path = Path(env)
        if not path.is_file():
            raise PianoRenderError(f"SEQMAMBA_SOUNDFONT={env}: no such file")
        return path
    for cand in _SOUNDFONT_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    return None


def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None


def choose_synth(synth: str, soundfont: Optional[str | os.PathLike] = None
                 ) -> tuple[str, Optional[Path]]:
    """Resolve ``auto`` and check that the requested synth can run here."""
    if synth not in SYNTHS:
        raise PianoRenderError(f"--synth must be one of {', '.join(SYNTHS)}, got {synth!r}")
    if synth == "additive":
        return "additive", None
    font = find_soundfont(soundfont)
    ok = fluidsynth_available() and font is not None
    if synth == "fluidsynth" and not ok:
        what = "the fluidsynth program" if not fluidsynth_available() else "a General MIDI SoundFont"
        raise PianoRenderError(f"--synth fluidsynth: {what} was not found; install with "
                               f"{INSTALL_FLUIDSYNTH}, or use --synth additive")
    return ("fluidsynth", font) if ok else ("additive", None)


# ---- scores -> notes --------------------------------------------------------------------------
def list_pieces(max_pieces: Optional[int] = None) -> list[str]:
    """Corpus paths in rendering order: the solo keyboard works, then Bach chorales (sorted)."""
    require_music21()
    from music21 import corpus

    pieces = list(SOLO_PIANO_WORKS)
    root = Path(corpus.getComposer("bach")[0]).parents[1] if corpus.getComposer("bach") else None
    chorales = sorted(p for p in corpus.getComposer("bach") if re.match(r"bwv[\d.]+\.mxl$", p.name))
    if root is not None:
        pieces += [str(p.relative_to(root).with_suffix("")) for p in chorales]
    if max_pieces is not None and max_pieces > 0:
        pieces = pieces[:max_pieces]
    return pieces


def _parse(piece: str):
    from music21 import corpus

    try:
        return corpus.parse(piece)
    except Exception as e:  # music21 raises many types for unknown/broken corpus entries
        raise PianoRenderError(f"cannot read corpus piece {piece!r}: {e}") from e


def _with_tempo(flat):
    from music21 import tempo

    if not list(flat.getElementsByClass(tempo.MetronomeMark)):
        flat.insert(0, tempo.MetronomeMark(number=DEFAULT_QPM))
    return flat


def _expand_repeats(score):
    """Play repeats as written (as music21's MIDI export does); scores whose repeat marks
    music21 cannot expand are played straight through."""
    try:
        return score.expandRepeats()
    except Exception:  # music21 raises several types on inconsistent repeat marks
        return score


def score_to_notes(score, max_seconds: Optional[float] = None, seed: int = 0) -> list[NoteEvent]:
    """Notes (onset/duration in seconds, tempo marks honoured, ties merged) of a music21 score.

    Repeats are expanded.  Velocities come from the score when it has them; otherwise a mild deterministic
    humanisation around mezzo-forte, with the top of each chord a little louder."""
    from music21 import chord, note

    rng = np.random.default_rng(seed)
    flat = _with_tempo(_expand_repeats(score).stripTies(inPlace=False).flatten())
    events: list[NoteEvent] = []
    for item in flat.secondsMap:
        el = item["element"]
        if not isinstance(el, (note.Note, chord.Chord)):
            continue
        onset = float(item["offsetSeconds"])
        dur = float(item["durationSeconds"])
        if max_seconds is not None and onset >= max_seconds:
            continue
        if dur <= 0:  # grace notes: sound them briefly
            dur = 0.08
        pitches = sorted(p.midi for p in el.pitches)
        base = el.volume.velocity
        for i, midi in enumerate(pitches):
            if base is None:
                vel = 72 + 8 * (i == len(pitches) - 1) + rng.normal(0, 6)
            else:
                vel = base + rng.normal(0, 3)
            events.append(NoteEvent(onset, dur, int(midi), int(np.clip(round(vel), 20, 120))))
    events.sort(key=lambda e: (e.onset, e.pitch))
    return events


# ---- additive piano synthesis -----------------------------------------------------------------
_RELEASE_S = 0.12      # damper time constant after key-up
_TAIL_S = 0.6          # how long after key-up a note is computed at most
_MAX_PARTIALS = 24
_MAX_RING_S = 10.0     # a held key is not rendered longer than this
_VELOCITY_LAYERS = 8   # like a sampled piano: one struck-string waveform per pitch and layer


@functools.lru_cache(maxsize=2048)
def _struck_string(pitch: int, layer: int, sr: int) -> np.ndarray:
    """The free ring of one key struck at velocity layer ``layer`` (no damper), float32.

    Computed once per (pitch, layer) and reused for every note, which makes rendering fast."""
    rng = np.random.default_rng(pitch * 131 + layer)
    f0 = 440.0 * 2.0 ** ((pitch - 69) / 12.0)
    v = (layer + 0.5) / _VELOCITY_LAYERS
    # Inharmonicity grows from ~3e-5 at the bottom of the keyboard to ~5e-3 at the top.
    B = 3e-5 * np.exp(0.06 * (pitch - 21))
    k = np.arange(1, _MAX_PARTIALS + 1, dtype=np.float64)
    fk = k * f0 * np.sqrt(1.0 + B * k * k)
    keep = fk < 0.45 * sr
    k, fk = k[keep], fk[keep]
    if len(k) == 0:
        return np.zeros(1, np.float32)
    # Brightness: loud notes keep more upper partials; hammer at 1/8 of the string thins k=8,16.
    amp = k ** -(0.9 + 1.6 * (1.0 - v)) * (0.25 + 0.75 * np.abs(np.sin(np.pi * k / 8.0)))
    amp /= 1.0 + (fk / (1500.0 + 2500.0 * v)) ** 2  # soundboard/hammer felt roll off the top
    amp /= amp.sum()
    # Decay: time constant (s) of the fundamental shrinks with pitch; upper partials die faster.
    tau = 2.2 * (261.6 / f0) ** 0.55
    tau_k = np.clip(tau / (1.0 + 0.25 * (k - 1) * (f0 / 261.6) ** 0.3), 0.03, 12.0)
    # The aftersound (0.35 * exp(-t/tau)) is at -60 dB after about 6 time constants.
    n = int(min(6.0 * tau_k[0] + 0.05, _MAX_RING_S) * sr)
    t = np.arange(n, dtype=np.float64) / sr
    wave = np.zeros(n, np.float64)
    detune = rng.uniform(0.3, 1.2) * 1e-3 * (pitch > 40)  # two unison strings beat slowly
    for a, f, tk in zip(amp, fk, tau_k):
        m = min(n, int(6.0 * tk * sr) + 1)  # upper partials die early: stop computing them
        tt = t[:m]
        env = 0.65 * np.exp(-tt * (3.5 / tk)) + 0.35 * np.exp(-tt / tk)
        w = 2 * np.pi * f * tt
        wave[:m] += a * env * (0.8 + 0.2 * np.cos(w * detune)) * np.sin(w + rng.uniform(0, 2 * np.pi))
    # Attack: a few ms, quicker when struck hard.
    attack = max(int(sr * (0.004 - 0.002 * v)), 1)
    wave[:attack] *= np.linspace(0.0, 1.0, attack, endpoint=False)
    # Hammer thump: 10 ms of smoothed, fast-decaying noise.
    m = min(int(0.01 * sr), n)
    thump = np.convolve(rng.normal(0, 1, m), np.ones(4) / 4, mode="same")
    wave[:m] += 0.02 * v * thump * np.exp(-np.arange(m) / (0.002 * sr))
    return wave.astype(np.float32)


def _note_waveform(ev: NoteEvent, sr: int) -> np.ndarray:
    layer = min(int(ev.velocity / 128 * _VELOCITY_LAYERS), _VELOCITY_LAYERS - 1)
    ring = _struck_string(ev.pitch, layer, sr)
    off = int(ev.duration * sr)
    n = min(len(ring), off + int(_TAIL_S * sr))
    wave = ring[:n].copy()
    if off < n:  # the damper falls on the string at key-up
        wave[off:] *= np.exp(-np.arange(n - off, dtype=np.float32) / np.float32(_RELEASE_S * sr))
    v = ev.velocity / 127.0
    return wave * np.float32((0.15 + 0.85 * v) ** 1.6)


def synthesize_additive(notes: Sequence[NoteEvent], sr: int = DEFAULT_SAMPLE_RATE,
                        peak: float = 0.8) -> np.ndarray:
    """Mix the notes into one float32 waveform peak-normalised to ``peak``."""
    if not notes:
        return np.zeros(0, np.float32)
    total = int((max(e.onset + e.duration for e in notes) + _TAIL_S) * sr) + 1
    out = np.zeros(total, np.float32)
    for ev in notes:
        w = _note_waveform(ev, sr)
        start = int(round(ev.onset * sr))
        end = min(start + len(w), total)
        out[start:end] += w[: end - start]
    return _normalize(out, peak)


def _normalize(wav: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(wav))) if wav.size else 0.0
    return wav if top == 0.0 else (wav * (peak / top)).astype(np.float32)


# ---- fluidsynth ---------------------------------------------------------------------------------
def _fluidsynth_render(score, soundfont: Path, sr: int, max_seconds: Optional[float],
                       peak: float = 0.8) -> np.ndarray:
    from music21 import instrument

    score = score.stripTies(inPlace=False)
    # Every part on a piano, whatever the score says (quartets and chorales included).
    for inst in list(score.recurse().getElementsByClass(instrument.Instrument)):
        inst.activeSite.replace(inst, instrument.Piano())
    for part in score.parts:
        if not part.recurse().getElementsByClass(instrument.Instrument):
            part.insert(0, instrument.Piano())
    from music21 import tempo
    if not list(score.flatten().getElementsByClass(tempo.MetronomeMark)):
        first = score.parts[0] if score.parts else score
        first.insert(0, tempo.MetronomeMark(number=DEFAULT_QPM))
    with tempfile.TemporaryDirectory(prefix="seqmamba-fs-") as tmp:
        mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        try:
            score.write("midi", fp=str(mid))
        except Exception as e:  # music21 raises its own types for scores it cannot unfold (bad repeats...)
            raise PianoRenderError(f"cannot write MIDI: {type(e).__name__}: {e}") from e
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(sr), "-F", str(wav),
               str(soundfont), str(mid)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wav.is_file():
            raise PianoRenderError(f"fluidsynth failed: {(proc.stderr or proc.stdout).strip()[:300]}")
        import soundfile as sf  # here, not at module top: `seqmamba` CLI start stays light

        data, file_sr = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if file_sr != sr:
        import torch
        import torchaudio.functional as AF
        mono = AF.resample(torch.from_numpy(mono), file_sr, sr).numpy()
    if max_seconds is not None:
        mono = mono[: int((max_seconds + _TAIL_S) * sr)]
    # fluidsynth renders reverb tails of silence at the end; trim below -60 dB of the peak.
    loud = np.nonzero(np.abs(mono) > 1e-3 * max(float(np.abs(mono).max()), 1e-9))[0]
    if loud.size:
        mono = mono[: loud[-1] + 1]
    return _normalize(mono.astype(np.float32), peak)


# ---- one piece / whole corpus ---------------------------------------------------------------------
def render_piece(piece: str, synth: str = "additive", soundfont: Optional[Path] = None,
                 sr: int = DEFAULT_SAMPLE_RATE, max_seconds: Optional[float] = None,
                 seed: int = 0) -> np.ndarray:
    """One corpus piece (e.g. ``"joplin/maple_leaf_rag"``) -> float32 mono waveform at ``sr``."""
    require_music21()
    score = _parse(piece)
    if synth == "fluidsynth":
        if soundfont is None:
            raise PianoRenderError("fluidsynth rendering needs a soundfont")
        return _fluidsynth_render(score, soundfont, sr, max_seconds)
    if synth != "additive":
        raise PianoRenderError(f"unknown synth {synth!r}")
    notes = score_to_notes(score, max_seconds=max_seconds, seed=seed)
    if not notes:
        raise PianoRenderError(f"corpus piece {piece!r} has no notes")
    return synthesize_additive(notes, sr=sr)


def _slug(piece: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", piece).strip("_").lower()


def render_corpus(out: str | os.PathLike, max_pieces: Optional[int] = 64, synth: str = "auto",
                  soundfont: Optional[str | os.PathLike] = None, sr: int = DEFAULT_SAMPLE_RATE,
                  max_seconds: Optional[float] = 240.0, seed: int = 0, overwrite: bool = False,
                  pieces: Optional[Iterable[str]] = None,
                  progress: Optional[Callable[[int, int, str], None]] = None) -> dict:
    """Render corpus pieces into ``out`` (WAV, PCM 16-bit, mono) plus manifest.tsv and
    PROVENANCE.md.  Everything is written to a temporary sibling folder first and moved into
    place at the end, so a failure leaves no half-written corpus.  Returns a summary dict."""
    music21 = require_music21()
    import soundfile as sf  # here, not at module top: `seqmamba` CLI start stays light

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PianoRenderError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    if sr < 4000:
        raise PianoRenderError(f"sample rate must be >= 4000 Hz, got {sr}")
    if max_pieces is not None and max_pieces < 0:
        raise PianoRenderError(f"--max-pieces must be >= 0, got {max_pieces}")
    if max_seconds is not None and max_seconds <= 0:
        raise PianoRenderError(f"--max-seconds must be > 0, got {max_seconds}")
    synth_used, font = choose_synth(synth, soundfont)
    todo = list(pieces) if pieces is not None else list_pieces(max_pieces)
    if not todo:
        raise PianoRenderError("no pieces to render")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    rows, skipped, total_s = [], [], 0.0
    try:
        for i, piece in enumerate(todo):
            if progress is not None:
                progress(i, len(todo), piece)
            try:
                wav = render_piece(piece, synth_used, font, sr, max_seconds, seed=seed * 100003 + i)
            except PianoRenderError as e:
                skipped.append(f"{piece}: {e}")
                continue
            if wav.size < sr:  # under a second: not worth a file
                skipped.append(f"{piece}: shorter than one second")
                continue
            name = f"{i:03d}_{_slug(piece)}.wav"
            sf.write(str(tmp / name), wav, sr, subtype="PCM_16")
            seconds = wav.size / sr
            total_s += seconds
            rows.append((name, piece, f"{seconds:.2f}"))
        if not rows:
            raise PianoRenderError("no piece could be rendered: " + "; ".join(skipped[:3]))
        with open(tmp / "manifest.tsv", "w") as fh:
            fh.write("file\tmusic21_corpus_piece\tseconds\n")
            fh.writelines("\t".join(r) + "\n" for r in rows)
        _write_provenance(tmp / "PROVENANCE.md", music21.__version__, synth_used, font, sr,
                          len(rows), total_s, skipped, max_seconds, seed)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "files": len(rows), "seconds": total_s, "synth": synth_used,
            "soundfont": str(font) if font else None, "skipped": skipped}


def _write_provenance(path: Path, m21_version: str, synth: str, font: Optional[Path], sr: int,
                      n: int, seconds: float, skipped: list[str], max_seconds, seed: int) -> None:
    if synth == "fluidsynth":
        how = (f"FluidSynth (`fluidsynth -ni -g 0.6 -r {sr}`) with the SoundFont `{font}`; every "
               "part set to General MIDI Acoustic Grand Piano; stereo mixed to mono.")
    else:
        how = ("seqmamba's additive piano synthesis (`seqmamba/data/piano_render.py`): inharmonic "
               "string partials, velocity-dependent brightness, two-stage decay, two-string beats, "
               "damper release, hammer noise. Pure numpy, deterministic for a given seed.")
    lines = [
        "# Offline piano corpus (rendered by `seqmamba data piano`)",
        "",
        f"- Rendered: {datetime.date.today().isoformat()}",
        f"- Scores: music21 {m21_version} bundled corpus (public-domain works; see manifest.tsv for "
        "the corpus path of each file). Solo keyboard works first, then J.S. Bach's chorales "
        "played on piano.",
        f"- Synth: **{synth}** — {how}",
        f"- Tempo: the score's marks; {DEFAULT_QPM:g} quarter notes per minute where a score has none.",
        f"- Audio: {sr} Hz, mono, 16-bit PCM WAV, each file peak-normalised to 0.8.",
        f"- Files: {n}, total {seconds / 60:.1f} minutes"
        + (f"; pieces cut after {max_seconds:g} s" if max_seconds else "") + f"; seed {seed}.",
        "- These are synthesized performances: useful for demos, tests and pipeline checks, not a "
        "substitute for recorded piano (YouTubeMix, recipes/youtubemix.yaml).",
    ]
    if skipped:
        lines += ["", f"Skipped ({len(skipped)}):", *[f"- {s}" for s in skipped]]
    path.write_text("\n".join(lines) + "\n")


def register_piano_command(data_app) -> None:
    """Adds ``seqmamba data piano`` to the ``seqmamba data`` command group."""
    import sys

    import typer

    @data_app.command("piano")
    def piano_cmd(
        out: Path = typer.Option(..., "--out", help="Folder for the WAV files (created; must be empty)."),
        max_pieces: int = typer.Option(64, "--max-pieces",
                                       help="Pieces to render (0 = all ~390: ~6 h of audio)."),
        synth: str = typer.Option("auto", help="auto, fluidsynth (needs fluidsynth + a GM SoundFont) "
                                               "or additive (pure numpy, works anywhere)."),
        soundfont: Optional[Path] = typer.Option(None, help="SoundFont for --synth fluidsynth."),
        max_seconds: float = typer.Option(240.0, "--max-seconds", help="Cut longer pieces."),
        sample_rate: int = typer.Option(DEFAULT_SAMPLE_RATE, "--sample-rate"),
        seed: int = typer.Option(0, help="Seed of the humanised velocities."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
    ):
        """Render an offline solo-piano corpus (music21's bundled scores) to 16 kHz WAV files."""
        bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=max_pieces or None, unit="piece", file=sys.stderr, desc="render")

        def progress(i, n, piece):
            if bar is not None:
                bar.total = n
                bar.n = i
                bar.set_postfix_str(piece)
                bar.refresh()

        try:
            summary = render_corpus(out, max_pieces=max_pieces or None, synth=synth,
                                    soundfont=soundfont, sr=sample_rate, max_seconds=max_seconds,
                                    seed=seed, overwrite=overwrite, progress=progress)
        except PianoRenderError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)
        finally:
            if bar is not None:
                bar.close()
        typer.echo(f"wrote {summary['files']} pieces ({summary['seconds'] / 60:.1f} min, synth "
                   f"{summary['synth']}) to {summary['out']}; see PROVENANCE.md there"
                   + (f"; skipped {len(summary['skipped'])}" if summary["skipped"] else ""))
        typer.echo(f"train: seqmamba pretrain recipes/piano-demo.yaml data.audio_dir={summary['out']}")
