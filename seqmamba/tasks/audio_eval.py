"""Audio evaluation: bits per sample of a model on held-out files, trivial baselines, and
statistics of generated clips against real held-out audio.

* ``bits_per_sample``: mean negative log-likelihood of each window's samples 2..L given the
  earlier ones, divided by ln 2 (SaShiMi / Mamba papers' metric), on fixed non-overlapping
  windows of the split; run it at the training length and at longer lengths to see whether the
  model uses (or is confused by) more context.
* ``ngram_baselines``: unigram and bigram models of the mu-law codes fitted on the train split
  (add-one smoothing), scored on the held-out split. A model must beat the bigram to be
  modelling more than the next sample's neighbourhood.
* ``clip_statistics`` / ``compare_statistics``: what a listener would notice first in generated
  audio, measured the same way on real clips:
    - mu-law code histogram, and its KL divergence KL(real || generated) in bits;
    - "runaway noise": frames (64 ms) whose spectral flatness exceeds 0.3 (white noise is about
      0.56, a piano note well under 0.05); a clip *runs away* when most frames of its last
      quarter are noise, the classic failure of sample-level generators;
    - silence rate: frames below -60 dBFS RMS;
    - clipping rate: samples at |x| >= 0.99.

``seqmamba audio-stats GENERATED_DIR --real AUDIO_DIR`` prints the comparison for a folder of
generated WAV files; ``seqmamba evaluate`` sends mu-law models to ``evaluate_audio_model``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..training.objectives import LN2, LMObjective

__all__ = ["bits_per_sample", "ngram_baselines", "clip_statistics", "compare_statistics",
           "evaluate_audio_model", "real_clips", "format_report", "format_samples", "register",
           "NOISE_FLATNESS", "SILENCE_DBFS"]

FRAME, HOP = 1024, 512
NOISE_FLATNESS = 0.3
SILENCE_DBFS = -60.0
CLIP_LEVEL = 0.99


# ---- likelihood ------------------------------------------------------------------------------
@torch.inference_mode()
def bits_per_sample(model, split, seq_len: int, max_windows: Optional[int] = 64,
                    batch_tokens: int = 1 << 16, progress: Optional[Callable[[int, int], None]] = None
                    ) -> dict:
    """Bits per sample of ``model`` on fixed windows of ``split`` (an ``AudioSplit``).

    Windows shorter than ``seq_len`` (files shorter than it) are scored as they are. Returns
    ``{"seq_len", "windows", "samples", "bits_per_sample"}``."""
    from seqmamba.data.audio import AudioWindowDataset

    data = AudioWindowDataset(split, seq_len, max_windows)
    if len(data) == 0:
        raise ValueError(f"the {split.name} split has no audio to score")
    device = model.device
    by_len: dict[int, list[int]] = {}
    for i in range(len(data)):
        n = min(len(split.codes[int(data.files[i])]) - int(data.starts[i]), seq_len)
        by_len.setdefault(n, []).append(i)
    objective = LMObjective(pad_id=-1)  # fixed windows: no padding, every sample counts
    nll_sum, count, done = 0.0, 0, 0
    for n, idx in sorted(by_len.items()):
        if n < 2:
            continue
        per_batch = max(batch_tokens // n, 1)
        for k in range(0, len(idx), per_batch):
            ids = torch.stack([data[j]["input_ids"] for j in idx[k:k + per_batch]]).to(device)
            nll, mask = objective.token_nll(model, ids)
            nll_sum += float((nll * mask).sum())
            count += int(mask.sum())
            done += ids.shape[0]
            if progress is not None:
                progress(done, len(data))
    return {"seq_len": seq_len, "windows": len(data), "samples": count,
            "bits_per_sample": nll_sum / max(count, 1) / LN2}


def ngram_baselines(train_codes: Sequence[np.ndarray], test_codes: Sequence[np.ndarray],
                    levels: int = 256) -> dict:
    """Unigram and bigram bits per sample (add-one smoothing; pairs never cross files)."""
    uni = np.ones(levels, dtype=np.float64)
    big = np.ones((levels, levels), dtype=np.float64)
    for c in train_codes:
        c = c.astype(np.int64)
        uni += np.bincount(c, minlength=levels)
        big += np.bincount(c[:-1] * levels + c[1:], minlength=levels * levels).reshape(levels, levels)
    log_uni = np.log2(uni / uni.sum())
    log_big = np.log2(big / big.sum(1, keepdims=True))
    u_sum = b_sum = 0.0
    u_n = b_n = 0
    for c in test_codes:
        c = c.astype(np.int64)
        u_sum -= float(log_uni[c].sum())
        u_n += len(c)
        b_sum -= float(log_big[c[:-1], c[1:]].sum())
        b_n += max(len(c) - 1, 0)
    return {"unigram_bits": u_sum / max(u_n, 1), "bigram_bits": b_sum / max(b_n, 1)}


# ---- sample statistics -------------------------------------------------------------------------
def _frames(wave: np.ndarray) -> np.ndarray:
    if len(wave) < FRAME:
        wave = np.pad(wave, (0, FRAME - len(wave)))
    n = 1 + (len(wave) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    return wave[idx]


def clip_statistics(waves: Sequence[np.ndarray], bits: int = 8) -> dict:
    """Statistics of float waveforms in [-1, 1] (see module doc), pooled over clips."""
    from seqmamba.tokenizers import MuLawTokenizer

    if not waves:
        raise ValueError("no clips to measure")
    tok = MuLawTokenizer(bits)
    hist = np.zeros(tok.levels, dtype=np.float64)
    noise = silent = frames_total = voiced = clipped = samples = runaway = 0
    window = np.hanning(FRAME)
    silence_rms = 10 ** (SILENCE_DBFS / 20)
    for w in waves:
        w = np.asarray(w, dtype=np.float64)
        hist += np.bincount(tok.encode(torch.from_numpy(w).float()).numpy(), minlength=tok.levels)
        clipped += int((np.abs(w) >= CLIP_LEVEL).sum())
        samples += len(w)
        fr = _frames(w)
        rms = np.sqrt((fr ** 2).mean(1))
        is_silent = rms < silence_rms
        power = np.abs(np.fft.rfft(fr * window, axis=1))[:, 1:] ** 2 + 1e-20
        flat = np.exp(np.log(power).mean(1)) / power.mean(1)
        is_noise = (flat > NOISE_FLATNESS) & ~is_silent
        frames_total += len(fr)
        silent += int(is_silent.sum())
        voiced += int((~is_silent).sum())
        noise += int(is_noise.sum())
        tail = is_noise[len(is_noise) * 3 // 4:]
        runaway += int(len(tail) > 0 and tail.mean() > 0.5)
    return {"clips": len(waves), "histogram": hist.tolist(),
            "noise_frame_rate": noise / max(voiced, 1), "runaway_noise_rate": runaway / len(waves),
            "silence_rate": silent / max(frames_total, 1), "clipping_rate": clipped / max(samples, 1)}


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    p = (np.asarray(p, np.float64) + 1) / (np.sum(p) + len(p))
    q = (np.asarray(q, np.float64) + 1) / (np.sum(q) + len(q))
    return float(np.sum(p * np.log2(p / q)))


def compare_statistics(generated: dict, real: dict) -> dict:
    """Side-by-side rates plus the histogram KL(real || generated) in bits."""
    keys = ("noise_frame_rate", "runaway_noise_rate", "silence_rate", "clipping_rate")
    out = {"histogram_kl_bits": _kl_bits(real["histogram"], generated["histogram"]),
           "clips": {"generated": generated["clips"], "real": real["clips"]}}
    for k in keys:
        out[k] = {"generated": generated[k], "real": real[k]}
    return out


def real_clips(split, seconds: float, sample_rate: int, max_clips: int = 16, bits: int = 8
               ) -> list[np.ndarray]:
    """Up to ``max_clips`` held-out clips of ``seconds`` (evenly spread over the split) as floats,
    to measure the same statistics on real audio."""
    from seqmamba.data.audio import AudioWindowDataset
    from seqmamba.tokenizers import MuLawTokenizer

    n = max(int(round(seconds * sample_rate)), 2)
    data = AudioWindowDataset(split, n, max_clips)
    tok = MuLawTokenizer(bits)
    return [tok.decode(data[i]["input_ids"]).numpy() for i in range(len(data))]


# ---- whole evaluation ---------------------------------------------------------------------------
def evaluate_audio_model(model, audio_dir: str, seq_lens: Sequence[int], split: str = "test",
                         split_seed: int = 0, sample_rate: int = 16000, max_windows: int = 64,
                         generated_dir: Optional[str] = None, folder=None,
                         echo: Callable[[str], None] = print) -> dict:
    """Bits per sample at each length in ``seq_lens`` on ``split`` + n-gram baselines, and,
    with ``generated_dir``, the statistics of its WAV clips against real clips of that split.
    ``folder``: an already loaded ``AudioFolder`` (skips reading the files again)."""
    from seqmamba.data.audio import AudioFolder

    tok = model.tokenizer
    if getattr(tok, "name", None) != "mulaw":
        raise ValueError("audio evaluation needs a mu-law audio model")
    if folder is None:
        folder = AudioFolder.load(audio_dir, sample_rate=sample_rate, bits=tok.bits)
        echo(folder.report())
    splits = folder.splits(split_seed)
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(splits)}, got {split!r}")
    held = splits[split]
    result = {"split": split, "files": len(held.names), "seconds": held.total_samples / sample_rate,
              "model": {"backbone": model.config.backbone, "parameters": model.num_parameters()},
              "bits_per_sample": [], "baselines": ngram_baselines(splits["train"].codes, held.codes,
                                                                  tok.levels)}
    for L in seq_lens:
        r = bits_per_sample(model, held, int(L), max_windows)
        result["bits_per_sample"].append(r)
    if generated_dir is not None:
        result["samples"] = sample_statistics(generated_dir, held, sample_rate, tok.bits)
    return result


def sample_statistics(generated_dir: str, held, sample_rate: int, bits: int = 8,
                      max_real: int = 16) -> dict:
    from seqmamba.audio_io import load_audio

    paths = sorted(Path(generated_dir).glob("*.wav"))
    if not paths:
        raise ValueError(f"{generated_dir}: no WAV clips to measure")
    gen = [load_audio(p, sample_rate)[0].numpy() for p in paths]
    seconds = float(np.mean([len(g) for g in gen])) / sample_rate
    real = real_clips(held, seconds, sample_rate, max_real, bits)
    out = compare_statistics(clip_statistics(gen, bits), clip_statistics(real, bits))
    out["seconds_per_clip"] = seconds
    return out


def format_report(result: dict) -> str:
    lines = [f"{result['split']} split: {result['files']} files, {result['seconds'] / 60:.1f} min"]
    for r in result["bits_per_sample"]:
        lines.append(f"  bits/sample at length {r['seq_len']:>8}: {r['bits_per_sample']:.3f} "
                     f"({r['windows']} windows)")
    b = result["baselines"]
    lines.append(f"  baselines: unigram {b['unigram_bits']:.3f}, bigram {b['bigram_bits']:.3f} bits/sample")
    if result.get("samples"):
        lines.append(format_samples(result["samples"]))
    return "\n".join(lines)


def format_samples(s: dict) -> str:
    lines = [f"  generated vs real ({s['clips']['generated']} vs {s['clips']['real']} clips of "
             f"{s['seconds_per_clip']:.1f} s): mu-law histogram KL {s['histogram_kl_bits']:.3f} bits"]
    for k in ("noise_frame_rate", "runaway_noise_rate", "silence_rate", "clipping_rate"):
        lines.append(f"    {k:20s} generated {s[k]['generated']:.3f}   real {s[k]['real']:.3f}")
    return "\n".join(lines)


def register(app) -> None:
    import typer

    from .cli_support import atomic_output, cli_errors

    @app.command("audio-stats")
    def audio_stats_cmd(
        generated: str = typer.Argument(..., help="Folder of generated WAV clips."),
        real: str = typer.Option(..., "--real", help="Audio folder the model was trained on."),
        split: str = typer.Option("test", help="Held-out split to compare with (valid or test)."),
        split_seed: int = typer.Option(0, "--split-seed", help="Seed of the file split."),
        sample_rate: int = typer.Option(16000, "--sample-rate"),
        out: Optional[str] = typer.Option(None, "--out", help="Also write the result as JSON."),
    ):
        """Compare generated clips with real held-out audio (histogram KL, noise, silence, clipping)."""
        from seqmamba.data.audio import AudioFolder

        with cli_errors():
            if sample_rate < 1:
                raise ValueError(f"--sample-rate must be >= 1, got {sample_rate}")
            folder = AudioFolder.load(real, sample_rate=sample_rate)
            splits = folder.splits(split_seed)
            if split not in splits:
                raise ValueError(f"--split must be one of {', '.join(splits)}, got {split!r}")
            stats = sample_statistics(generated, splits[split], sample_rate, folder.bits)
            report = format_report({"split": split, "files": len(splits[split].names),
                                    "seconds": splits[split].total_samples / sample_rate,
                                    "bits_per_sample": [], "baselines": ngram_baselines(
                                        splits["train"].codes, splits[split].codes),
                                    "samples": stats})
            # The JSON first: a bad --out fails before anything is printed.
            if out:
                with atomic_output(out, suffix=".json") as tmp:
                    tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        typer.echo(folder.report())
        typer.echo(report)


def evaluate_command(model, model_path: str, audio_dir: Optional[str], seq_len: int,
                     split: str = "test", max_windows: Optional[int] = None,
                     as_json: bool = False, split_seed: int = 0, sample_rate: int = 16000,
                     echo: Callable[[str], None] = print) -> dict:
    """What ``seqmamba evaluate MODEL --audio-dir DIR`` does for a mu-law model: bits/sample on
    the held-out ``split`` of the folder (the training split rule) plus n-gram baselines."""
    if audio_dir is None:
        raise ValueError(f"{model_path} is an audio model: give --audio-dir (the folder of audio "
                         f"files it was trained on; its {split} files are scored)")
    if split not in ("train", "valid", "test"):
        raise ValueError(f"--split must be train, valid or test for audio, got {split!r}")
    if seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {seq_len}")
    result = evaluate_audio_model(model, audio_dir, [seq_len], split, split_seed, sample_rate,
                                  max_windows or 10**9, echo=lambda s: None)
    if as_json:
        echo(json.dumps({"model": str(model_path), **result}, indent=2))
    else:
        echo(f"model: {model_path}")
        echo(format_report(result))
    return result
