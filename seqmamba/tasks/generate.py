"""``seqmamba generate``: sample piano (or any mu-law audio) clips from a trained audio LM.

    seqmamba generate runs/piano-demo-.../export --seconds 4 --num 4 --temperature 1 --top-p 0.95 \
        [--prompt clip.wav --prompt-seconds 1] --out samples/

Writes into ``--out`` (created; existing files of the same names are refused unless
``--overwrite``):

* ``clip_000.wav`` ... 16 kHz mono 16-bit WAV (the prompt, when given, then its continuation);
* ``clip_000.png`` ... a spectrogram of each clip (a dashed line marks the end of the prompt);
* ``samples.tsv`` / ``samples.json``: per clip the log-likelihood of the generated samples under
  the model (natural log, untempered distribution over the audio levels) and the same as bits per sample, plus the
  settings and the measured real-time factor.

Generation is batched (``--batch-size`` clips at once) and recurrent: the prompt (or, without one,
a single silence sample) fills the model's cache in one parallel pass, then one ``step`` per
sample. On CUDA both backbones decode through CUDA graphs (``seqmamba.kernels.decode_graph``:
``GraphedStep`` for a plain Mamba LM, ``UNetGraphedStep`` for the U-Net, one graph per phase of
its pooling cycle) with sampling and the log-likelihood inside the graph, so hundreds of samples
are generated per replay with no host work in between. Their random stream is their own
(counter-based noise keyed by ``--seed`` and the batch): clips are reproducible for a seed on a
GPU but differ from the CPU's, which samples eagerly with a seeded ``torch.Generator``.
The progress bar shows audio seconds produced and the real-time factor (audio seconds per wall
second, all clips of the batch counted).

Checkpoints whose tokenizer is not mu-law (DNA models) are refused with one error line: this
command writes audio only.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..atomic_io import atomic_output
__all__ = ["GenerationResult", "check_audio_model", "sample_audio", "run_generate",
           "save_spectrogram", "register"]

DEFAULT_SAMPLE_RATE = 16000


@dataclass
class GenerationResult:
    codes: torch.Tensor      # (num, prompt + new) int64 mu-law codes, on CPU
    loglik: np.ndarray       # (num,) float64 nats of the generated samples (prompt excluded)
    prompt_len: int          # samples of prompt at the start of each clip (1 silence sample if none)
    new_samples: int
    seconds_wall: float

    @property
    def bits_per_sample(self) -> np.ndarray:
        return -self.loglik / (max(self.new_samples, 1) * math.log(2))


def check_audio_model(model, source: str = "the checkpoint") -> None:
    """Refuse models that cannot generate audio, with one clear line."""
    head = getattr(model.config, "head", None)
    if head != "lm":
        raise ValueError(f"{source} is a {head!r} model; generation needs a language model "
                         f"(head 'lm') trained on mu-law audio")
    tok = model.config.tokenizer or {}
    name = tok.get("name")
    if name != "mulaw":
        kind = "a DNA" if str(name).startswith("dna") else f"a {name!r}"
        raise ValueError(f"{source} is {kind} language model (tokenizer {name!r}); `seqmamba "
                         f"generate` writes audio and needs a mu-law audio model, e.g. one trained "
                         f"with `seqmamba pretrain recipes/piano-demo.yaml`")


def _silence_code(tokenizer) -> int:
    return int(tokenizer.encode(torch.zeros(1))[0])


def _graphed_decoder(model, batch: int, use_graph: str, temperature: float, top_k, top_p,
                     pad: Optional[int], new_samples: int):
    """A graphed decoder sampling on the device (pad excluded, log-likelihood tracked) when the
    model is on CUDA and use_graph allows it; None for the eager loop."""
    if use_graph == "off" or model.device.type != "cuda":
        return None
    from seqmamba.kernels.decode_graph import graphed_decoder_or_none

    ban = pad if pad is not None and pad < model.config.vocab_size else None
    return graphed_decoder_or_none(
        model, batch, lambda: dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                   ban_token=ban, loglik=True, max_tokens=new_samples),
        required=use_graph == "on", option="use_graph='on'", stacklevel=2)


class _decode_threads:
    """One intra-op thread for CPU decoding of small models: each step is dozens of tiny ops,
    where thread hand-offs cost more than they save (about 10x slower with 2 threads on a busy
    2-core machine). Larger batches of wide models keep the caller's setting."""

    def __init__(self, model, batch: int):
        width = model.config.d_model * model.config.expand * batch
        self.active = model.device.type == "cpu" and width < (1 << 15)
        self.saved = torch.get_num_threads()

    def __enter__(self):
        if self.active:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.active:
            torch.set_num_threads(self.saved)


def _sample_eager(model, ids: torch.Tensor, new_samples: int, temperature: float, top_k, top_p,
                  pad: Optional[int], gen: torch.Generator, on_step):
    """The host-side decode loop: (B, L0) prompt -> (B, new_samples) codes, (B,) log-lik."""
    from seqmamba.heads.lm import sample_next

    B = ids.shape[0]
    cache = model.allocate_cache(B)
    logits = model.logits_from_hidden(model.backbone(ids, cache=cache)[:, -1])
    out = torch.empty(B, new_samples, dtype=torch.long, device=ids.device)
    ll = torch.zeros(B, dtype=torch.float64, device=ids.device)
    with _decode_threads(model, B):
        for i in range(new_samples):
            logits = logits.float()
            if pad is not None and pad < logits.shape[-1]:
                logits[:, pad] = float("-inf")
            token = sample_next(logits, temperature, top_k, top_p, gen)
            ll += torch.log_softmax(logits, -1).gather(1, token[:, None])[:, 0].double()
            out[:, i] = token
            if i + 1 < new_samples:
                logits = model.step(token, cache)
            if on_step is not None:
                on_step(B)
    return out, ll


@torch.inference_mode()
def sample_audio(model, new_samples: int, num: int = 1, temperature: float = 1.0,
                 top_p: Optional[float] = None, top_k: Optional[int] = None,
                 prompt: Optional[torch.Tensor] = None, batch_size: int = 8, seed: int = 0,
                 use_graph: str = "auto",
                 on_step: Optional[Callable[[int], None]] = None) -> GenerationResult:
    """Sample ``num`` continuations of ``new_samples`` mu-law codes each.

    prompt: 1-D codes shared by all clips; None starts from one silence sample.
    use_graph: "auto" (CUDA graphs on CUDA, see the module docstring), "on" (an error when not
        possible), "off" (eager decoding everywhere).
    on_step(n): called as decoding advances with the number of new samples since the last
        call (all clips of the batch counted).
    The pad id is never sampled. The log-likelihood is under the model's own distribution over
    the audio levels (pad excluded and renormalised; no temperature / top-p), so it compares
    across sampling settings.
    """
    if new_samples < 1:
        raise ValueError(f"need at least one sample to generate, got {new_samples}")
    if num < 1 or batch_size < 1:
        raise ValueError(f"--num and --batch-size must be >= 1, got {num} and {batch_size}")
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    if use_graph not in ("auto", "on", "off"):
        raise ValueError(f"use_graph must be 'auto', 'on' or 'off', got {use_graph!r}")

    tokenizer = model.tokenizer
    device = model.device
    if prompt is None:
        prompt = torch.tensor([_silence_code(tokenizer)])
    prompt = prompt.to(device=device, dtype=torch.long)
    L0 = prompt.shape[0]
    pad = getattr(tokenizer, "pad_id", None)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    codes = torch.empty(num, L0 + new_samples, dtype=torch.long)
    loglik = np.zeros(num, dtype=np.float64)
    t0 = time.perf_counter()
    decoders = {}  # batch size -> graphed decoder (its graphs serve every batch of that size)
    for first in range(0, num, batch_size):
        B = min(batch_size, num - first)
        ids = prompt[None].expand(B, L0).contiguous()
        if B not in decoders:
            decoders[B] = _graphed_decoder(model, B, use_graph, temperature, top_k, top_p, pad,
                                           new_samples)
        graphed = decoders[B]
        if graphed is not None:
            graphed.reset(seed=(seed, first))  # each batch of clips its own noise
            progress = None if on_step is None else (lambda n, B=B: on_step(n * B))
            out = graphed.generate(ids, new_samples, on_progress=progress)
            ll = graphed.loglik
        else:
            out, ll = _sample_eager(model, ids, new_samples, temperature, top_k, top_p, pad,
                                    gen, on_step)
        codes[first:first + B, :L0] = prompt.cpu()
        codes[first:first + B, L0:] = out.cpu()
        loglik[first:first + B] = ll.cpu().numpy()
    return GenerationResult(codes, loglik, L0, new_samples, time.perf_counter() - t0)


def save_spectrogram(path: Path, wave: np.ndarray, sample_rate: int, title: str,
                     prompt_seconds: float = 0.0) -> None:
    """A log-power spectrogram PNG (Hann-windowed STFT, 512 points, 75 % overlap), written
    atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nfft = 512 if len(wave) >= 512 else 1 << max(4, int(math.log2(max(len(wave), 16))))
    hop = nfft // 4
    x = np.pad(np.asarray(wave, np.float64), (0, max(nfft - len(wave), 0)))
    frames = np.lib.stride_tricks.sliding_window_view(x, nfft)[::hop] * np.hanning(nfft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    # dB with a -120 dB floor: digital silence (e.g. greedy decoding of an untrained model)
    # would otherwise be log(0).
    db = 10 * np.log10(np.maximum(power, 1e-12))
    times = (np.arange(len(frames)) * hop + nfft / 2) / sample_rate
    freqs = np.fft.rfftfreq(nfft, 1 / sample_rate)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    try:
        ax.pcolormesh(times, freqs, db.T, shading="auto", cmap="magma",
                      vmin=max(db.max() - 100, -120), vmax=db.max())
        if prompt_seconds > 0:
            ax.axvline(prompt_seconds, color="cyan", linestyle="--", linewidth=1)
        ax.set_xlabel("seconds")
        ax.set_ylabel("Hz")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


class _Progress:
    """tqdm bar in audio seconds with the real-time factor in the postfix."""

    def __init__(self, total_seconds: float, sample_rate: int, enabled: bool):
        self.sr, self.t0, self.done, self.pending = sample_rate, time.perf_counter(), 0, 0
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=round(total_seconds, 2), unit="s audio", file=sys.stderr,
                            desc="generate", bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s "
                            "[{elapsed}<{remaining}{postfix}]")

    def __call__(self, clips: int) -> None:
        self.pending += clips
        if self.pending >= 2048 or self.bar is None:
            self.flush()

    def flush(self) -> None:
        self.done += self.pending
        if self.bar is not None and self.pending:
            self.bar.update(self.pending / self.sr)
            wall = time.perf_counter() - self.t0
            self.bar.set_postfix_str(f"{self.done / self.sr / max(wall, 1e-9):.3f}x real time")
        self.pending = 0

    def close(self) -> None:
        self.flush()
        if self.bar is not None:
            self.bar.close()


def _load_prompt(path: str, seconds: Optional[float], tokenizer, sample_rate: int) -> torch.Tensor:
    from seqmamba.audio_io import load_audio

    wave, _ = load_audio(path, sample_rate)
    if seconds is not None:
        need = int(round(seconds * sample_rate))
        if need > wave.numel():
            raise ValueError(f"{path}: the prompt clip is {wave.numel() / sample_rate:.2f} s long, "
                             f"shorter than --prompt-seconds {seconds:g}")
        wave = wave[:need]
    return tokenizer.encode(wave)


def run_generate(checkpoint: str, out: str, seconds: float = 4.0, num: int = 1,
                 temperature: float = 1.0, top_p: Optional[float] = None,
                 top_k: Optional[int] = None, prompt: Optional[str] = None,
                 prompt_seconds: Optional[float] = None, batch_size: int = 8, seed: int = 0,
                 device: str = "auto", sample_rate: int = DEFAULT_SAMPLE_RATE,
                 overwrite: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print) -> dict:
    """The whole ``generate`` command; returns the summary written to samples.json."""
    from seqmamba.audio_io import save_audio
    from seqmamba.training.artifacts import load_trained_model

    # Every check before any work or output.
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"--seconds must be > 0, got {seconds}")
    if prompt_seconds is not None and prompt is None:
        raise ValueError("--prompt-seconds needs --prompt CLIP")
    if prompt_seconds is not None and not prompt_seconds > 0:
        raise ValueError(f"--prompt-seconds must be > 0, got {prompt_seconds}")
    if sample_rate < 1000:
        raise ValueError(f"--sample-rate must be >= 1000, got {sample_rate}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    names = [f"clip_{i:03d}" for i in range(num)] if num >= 1 else []
    if out_dir.is_dir() and not overwrite:
        clash = [n for n in names if (out_dir / f"{n}.wav").exists()] + \
            [n for n in ("samples.tsv", "samples.json") if (out_dir / n).exists()]
        if clash:
            raise ValueError(f"--out {out_dir}: already holds {clash[0]}... (pass --overwrite to "
                             f"replace, or choose another folder)")
    model = load_trained_model(checkpoint, device)
    check_audio_model(model, checkpoint)
    prompt_codes = None
    if prompt is not None:
        prompt_codes = _load_prompt(prompt, prompt_seconds, model.tokenizer, sample_rate)
    new = int(round(seconds * sample_rate))

    bar = _Progress(num * seconds, sample_rate, progress)
    try:
        result = sample_audio(model, new, num, temperature, top_p, top_k, prompt_codes,
                              batch_size, seed, on_step=bar)
    finally:
        bar.close()

    out_dir.mkdir(parents=True, exist_ok=True)
    waves = model.tokenizer.decode(result.codes).numpy()
    p_sec = 0.0 if prompt_codes is None else result.prompt_len / sample_rate
    bits = result.bits_per_sample
    rows = []
    for i, name in enumerate(names):
        save_audio(out_dir / f"{name}.wav", waves[i], sample_rate, subtype="PCM_16")
        save_spectrogram(out_dir / f"{name}.png", waves[i], sample_rate,
                         f"{name}: {bits[i]:.3f} bits/sample, T={temperature:g}"
                         + (f", top-p={top_p:g}" if top_p else ""), p_sec)
        rows.append({"file": f"{name}.wav", "seconds": round(waves.shape[1] / sample_rate, 4),
                     "prompt_seconds": round(p_sec, 4), "generated_samples": result.new_samples,
                     "loglik_nats": float(result.loglik[i]), "bits_per_sample": float(bits[i])})
    audio_seconds = num * new / sample_rate
    summary = {
        "checkpoint": str(checkpoint), "device": str(model.device),
        "backbone": model.config.backbone, "sample_rate": sample_rate, "num": num,
        "seconds": seconds, "temperature": temperature, "top_p": top_p, "top_k": top_k,
        "prompt": prompt, "prompt_seconds": round(p_sec, 4), "seed": seed,
        "batch_size": batch_size, "wall_seconds": round(result.seconds_wall, 3),
        "real_time_factor": round(audio_seconds / max(result.seconds_wall, 1e-9), 4),
        "clips": rows,
    }
    tsv = "file\tseconds\tprompt_seconds\tgenerated_samples\tloglik_nats\tbits_per_sample\n" + "".join(
        f"{r['file']}\t{r['seconds']}\t{r['prompt_seconds']}\t{r['generated_samples']}\t"
        f"{r['loglik_nats']:.3f}\t{r['bits_per_sample']:.4f}\n" for r in rows)
    for fname, text in (("samples.tsv", tsv), ("samples.json", json.dumps(summary, indent=2) + "\n")):
        with atomic_output(out_dir / fname) as tmp:
            tmp.write_text(text)
    echo(f"wrote {num} clip(s) of {seconds:g} s to {out_dir} "
         f"(mean {float(bits.mean()):.3f} bits/sample; {summary['real_time_factor']:.3f}x real time "
         f"on {model.device})")
    return summary


def register(app) -> None:
    import typer

    from .cli_support import cli_errors

    @app.command("generate")
    def generate_cmd(
        checkpoint: str = typer.Argument(..., help="Audio model: export folder, run folder or .ckpt."),
        out: str = typer.Option(..., "--out", "-o", help="Output folder (created)."),
        seconds: float = typer.Option(4.0, help="Seconds of new audio per clip."),
        num: int = typer.Option(1, help="Number of clips."),
        temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
        top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling mass (0, 1]."),
        top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample among the k likeliest."),
        prompt: Optional[str] = typer.Option(None, help="Audio clip to continue (WAV/FLAC/OGG)."),
        prompt_seconds: Optional[float] = typer.Option(
            None, "--prompt-seconds", help="Use the first K seconds of --prompt (default: all)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Clips generated at once."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto (GPU when available), cpu, cuda, ..."),
        sample_rate: int = typer.Option(DEFAULT_SAMPLE_RATE, "--sample-rate",
                                        help="Sample rate the model was trained at."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing clips."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    ):
        """Generate audio clips (WAV + spectrogram PNG + log-likelihoods) from an audio model."""
        with cli_errors():
            run_generate(checkpoint, out, seconds=seconds, num=num, temperature=temperature,
                         top_p=top_p, top_k=top_k, prompt=prompt, prompt_seconds=prompt_seconds,
                         batch_size=batch_size, seed=seed, device=device, sample_rate=sample_rate,
                         overwrite=overwrite, progress=progress and sys.stderr.isatty(),
                         echo=lambda s: typer.echo(s, err=True))
