"""`seqmamba generate` end to end on tiny random audio models, and its clear errors."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from seqmamba.cli import app
from seqmamba.config import ModelConfig
from seqmamba.heads import build_model
from seqmamba.tasks.generate import sample_audio
from seqmamba.tokenizers import DNACharTokenizer, MuLawTokenizer

runner = CliRunner()


def audio_model(backbone="unet"):
    torch.manual_seed(0)
    tok = MuLawTokenizer(8)
    cfg = ModelConfig(d_model=8, n_layer=3 if backbone == "unet" else 1, vocab_size=tok.vocab_size,
                      backbone=backbone, unet={"pool": [2]} if backbone == "unet" else None)
    return build_model(cfg, tokenizer=tok).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "unet"
    audio_model().save_pretrained(path)
    return path


def invoke(*args):
    return runner.invoke(app, ["generate", *map(str, args), "--no-progress"])


def test_generate_writes_clips_spectrograms_and_likelihoods(ckpt, tmp_path):
    out = tmp_path / "gen"
    r = invoke(ckpt, "--seconds", 0.01, "--num", 3, "--batch-size", 2, "--top-p", 0.9,
               "--out", out)
    assert r.exit_code == 0, r.output
    for i in range(3):
        wav, sr = sf.read(out / f"clip_{i:03d}.wav")
        assert sr == 16000 and wav.ndim == 1 and len(wav) == 161  # 1 silence sample + 160
        assert (out / f"clip_{i:03d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "samples.tsv").read_text().splitlines()
    assert rows[0].split("\t")[-1] == "bits_per_sample" and len(rows) == 4
    summary = json.loads((out / "samples.json").read_text())
    assert summary["backbone"] == "unet" and summary["real_time_factor"] > 0
    for clip in summary["clips"]:
        assert clip["loglik_nats"] < 0 and 0 < clip["bits_per_sample"] < 12

    # Same seed, same clips.
    r = invoke(ckpt, "--seconds", 0.01, "--num", 3, "--batch-size", 2, "--top-p", 0.9,
               "--out", tmp_path / "again")
    assert r.exit_code == 0
    assert np.array_equal(sf.read(out / "clip_001.wav")[0], sf.read(tmp_path / "again" / "clip_001.wav")[0])


def test_prompt_is_kept_and_continued(ckpt, tmp_path):
    prompt = tmp_path / "prompt.wav"
    t = np.arange(1600) / 16000
    sf.write(prompt, 0.5 * np.sin(2 * np.pi * 440 * t), 16000)
    out = tmp_path / "gen"
    r = invoke(ckpt, "--seconds", 0.005, "--prompt", prompt, "--prompt-seconds", 0.01, "--out", out)
    assert r.exit_code == 0, r.output
    wav, _ = sf.read(out / "clip_000.wav", dtype="float32")
    assert len(wav) == 160 + 80
    tok = MuLawTokenizer(8)
    src, _ = sf.read(prompt, dtype="float32")
    assert torch.equal(tok.encode(torch.from_numpy(wav[:160])), tok.encode(torch.from_numpy(src[:160])))
    assert json.loads((out / "samples.json").read_text())["prompt_seconds"] == 0.01


def test_loglik_matches_parallel_forward():
    """The recurrent log-likelihood equals the parallel forward's on the sampled sequence."""
    model = audio_model()
    res = sample_audio(model, 40, num=2, batch_size=2, seed=1)
    ids = res.codes
    with torch.no_grad():
        logits = model(ids[:, :-1]).float()
        logits[..., model.tokenizer.pad_id] = float("-inf")  # never sampled: excluded
        logp = torch.log_softmax(logits, -1)
    ll = logp.gather(2, ids[:, 1:, None])[..., 0][:, res.prompt_len - 1:].sum(1).double()
    assert np.allclose(ll.numpy(), res.loglik, atol=1e-3)
    assert (ids != model.tokenizer.pad_id).all()


def test_plain_mamba_audio_model(tmp_path):
    model = audio_model("mamba")
    model.save_pretrained(tmp_path / "m")
    r = invoke(tmp_path / "m", "--seconds", 0.003, "--temperature", 0, "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output


def test_clear_errors(ckpt, tmp_path):
    dna = tmp_path / "dna"
    torch.manual_seed(0)
    tok = DNACharTokenizer()
    build_model(ModelConfig(d_model=8, n_layer=1, vocab_size=tok.vocab_size), tokenizer=tok) \
        .save_pretrained(dna)
    cases = [
        ((dna, "--out", tmp_path / "o1"), "DNA language model"),
        ((ckpt, "--prompt-seconds", 1, "--out", tmp_path / "o2"), "--prompt-seconds needs --prompt"),
        ((ckpt, "--top-p", 1.5, "--out", tmp_path / "o3"), "--top-p must be in (0, 1]"),
        ((ckpt, "--seconds", 0, "--out", tmp_path / "o4"), "--seconds must be > 0"),
        ((tmp_path / "missing", "--out", tmp_path / "o5"), "no such model"),
        ((ckpt, "--prompt", tmp_path / "nope.wav", "--out", tmp_path / "o6"), "no such audio file"),
    ]
    for args, message in cases:
        r = invoke(*args)
        assert r.exit_code == 1, (args, r.output)
        assert message in r.output and r.output.count("error:") == 1, r.output
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))  # no partial output

    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * np.ones(160, np.float32), 16000)
    r = invoke(ckpt, "--prompt", short, "--prompt-seconds", 1, "--out", tmp_path / "o7")
    assert r.exit_code == 1 and "shorter than --prompt-seconds" in r.output

    out = tmp_path / "once"
    assert invoke(ckpt, "--seconds", 0.002, "--out", out).exit_code == 0
    r = invoke(ckpt, "--seconds", 0.002, "--out", out)
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert invoke(ckpt, "--seconds", 0.002, "--out", out, "--overwrite").exit_code == 0


def test_audio_stats_compares_generated_with_real(ckpt, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    t = np.arange(8000) / 16000
    for i in range(4):
        sf.write(real / f"r{i}.wav", 0.4 * np.sin(2 * np.pi * (220 + 55 * i) * t), 16000)
    gen = tmp_path / "gen"
    assert invoke(ckpt, "--seconds", 0.1, "--num", 2, "--out", gen).exit_code == 0
    r = runner.invoke(app, ["audio-stats", str(gen), "--real", str(real), "--out",
                            str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "s.json").read_text())
    # A bad --out fails before the report is printed, with "path: reason", and keeps old files.
    r = runner.invoke(app, ["audio-stats", str(gen), "--real", str(real), "--out",
                            str(tmp_path / "nope" / "s.json")])
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert r.stderr.strip() == f"error: {tmp_path / 'nope'}: output folder does not exist"
    # An untrained model produces noise; the real sine tones have none.
    assert stats["noise_frame_rate"]["real"] == 0.0
    assert stats["noise_frame_rate"]["generated"] > 0.5 and stats["histogram_kl_bits"] > 0.1
