"""Audio folders as training data: loading with bad files skipped, file-level splits, windows,
the audio recipe, and one tiny run through the shared training engine."""
import numpy as np
import pytest
import soundfile as sf
import torch

from seqmamba.config import ConfigError
from seqmamba.data.audio import (AudioDataError, AudioFolder, AudioLMSource, AudioWindowDataset,
                                 build_audio_recipe, is_audio_recipe, split_files)
from seqmamba.tokenizers import MuLawTokenizer


def tone(seconds, sr=16000, freq=440.0, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        sf.write(root / f"good{i}.wav", tone(0.25 + 0.05 * i, freq=220 * (i + 1)), 16000)
    sf.write(root / "sub" / "stereo_8k.flac", np.stack([tone(0.3, 8000), tone(0.3, 8000)], 1), 8000)
    sf.write(root / "good.ogg", tone(0.2), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage that is not audio" * 10)
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "no_samples.wav", np.zeros(0, np.float32), 16000)
    sf.write(root / "silent.wav", np.zeros(4000, np.float32), 16000)
    (root / "notes.txt").write_text("not audio, ignored")
    return root


def test_load_skips_and_counts_bad_files(folder):
    f = AudioFolder.load(folder)
    assert len(f.names) == 6
    assert "sub/stereo_8k.flac" in f.names and "good.ogg" in f.names
    reasons = sorted(s.reason for s in f.skipped)
    assert reasons == ["corrupt", "empty", "empty", "silent"]
    report = f.report()
    assert "6 audio files used" in report and "1 corrupt, 2 empty, 1 silent" in report
    # Resampled to 16 kHz, mixed to mono, mu-law coded.
    i = f.names.index("sub/stereo_8k.flac")
    assert abs(len(f.codes[i]) - 0.3 * 16000) <= 2
    j = f.names.index("good0.wav")
    wave, _ = sf.read(folder / "good0.wav", dtype="float32")
    expected = MuLawTokenizer(8).encode(torch.from_numpy(wave)).numpy()
    assert f.codes[j].dtype == np.uint8 and np.array_equal(f.codes[j], expected)


def test_nothing_usable_is_an_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.wav").write_bytes(b"junk" * 20)
    sf.write(root / "b.wav", np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioDataError, match="no usable audio file.*1 corrupt, 1 silent"):
        AudioFolder.load(root)
    with pytest.raises(AudioDataError, match="holds no audio files"):
        other = tmp_path / "other"
        other.mkdir()
        (other / "readme.txt").write_text("no audio here")
        AudioFolder.load(other)


def test_missing_known_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(AudioDataError, match="huggingface-cli download krandiash/youtubemix"):
        AudioFolder.load(tmp_path / "youtube_mix", dataset="youtubemix")
    with pytest.raises(AudioDataError, match="seqmamba data piano"):
        AudioFolder.load(tmp_path / "piano", dataset="piano")


def test_split_files():
    s = split_files(100, seed=3)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [88, 6, 6]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(100))
    again = split_files(100, seed=3)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(split_files(100, seed=4)["test"], s["test"])
    small = split_files(3)
    assert [len(small[k]) for k in ("train", "valid", "test")] == [1, 1, 1]
    with pytest.raises(AudioDataError, match="at least 3"):
        split_files(2)


def test_windows_and_sources(folder):
    f = AudioFolder.load(folder)
    splits = f.splits(0)
    assert sum(len(s.names) for s in splits.values()) == 6
    train = splits["train"]
    files, starts = train.windows(1000)
    for fi, st in zip(files, starts):
        assert st % 1000 == 0 and st + 1000 <= max(len(train.codes[fi]), 1000)
    # A file shorter than the window gives one (short) window.
    files, starts = train.windows(10**6)
    assert len(files) == len(train.codes) and not starts.any()

    src = AudioLMSource(train)
    n = src.size(1000)
    for k in range(n):
        ids = src.get(1000, k, np.random.default_rng(k))["input_ids"]
        assert ids.dtype == torch.long and len(ids) == 1000
    a = src.get(1000, 0, np.random.default_rng(7))["input_ids"]
    b = src.get(1000, 0, np.random.default_rng(7))["input_ids"]
    assert torch.equal(a, b)  # all randomness comes from the sampler's rng

    ds = AudioWindowDataset(train, 500, max_windows=3)
    assert len(ds) == 3 and ds[0]["input_ids"].shape == (500,)


def test_audio_recipe_checks(tmp_path):
    base = {"model": {"d_model": 8, "n_layer": 1}, "data": {"audio_dir": str(tmp_path)},
            "schedule": {"stages": [{"seq_len": 64, "batch_size": 2}]}}
    assert is_audio_recipe(base) and not is_audio_recipe({"data": {"fasta": "x.fa"}})
    rec = build_audio_recipe(dict(base), None)
    assert rec.model.tokenizer == {"name": "mulaw", "bits": 8} and rec.model.vocab_size == 257
    bad = {**base, "model": {"d_model": 8, "n_layer": 1, "tokenizer": {"name": "dna_char"}}}
    with pytest.raises(ConfigError, match="mulaw"):
        build_audio_recipe(bad, None)
    with pytest.raises(ConfigError, match="data.dataset"):
        build_audio_recipe({**base, "data": {"audio_dir": "x", "dataset": "nope"}}, None)


def test_tiny_audio_run_through_engine(tmp_path):
    """The audio data plugs into the shared engine: train, export, evaluate, generate."""
    import json

    from seqmamba.training.pretrain import pretrain
    from seqmamba.training.recipe import load_pretrain_recipe

    root = tmp_path / "audio"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(root / f"t{i}.wav", tone(0.2, freq=200 + 50 * i) + 0.01 * rng.normal(size=3200), 16000)
    overrides = [f"data.audio_dir={root}", f"trainer.runs_dir={tmp_path / 'runs'}",
                 "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.log_every=1",
                 "trainer.ckpt_every=2", "eval.max_windows=2", "generate.seconds=0.005",
                 "schedule.warmup_steps=1"]
    recipe = load_pretrain_recipe(None, overrides, base={
        "name": "tiny-audio",
        "model": {"backbone": "unet", "d_model": 8, "n_layer": 3, "unet": {"pool": [2]}},
        "data": {"audio_dir": "unused", "max_valid_windows": 2},
        "trainer": {"num_workers": 0, "accelerator": "cpu"},
        "schedule": {"stages": [{"seq_len": 128, "batch_size": 2}]},
        "eval": {"seq_lens": [128, 256]},
        "generate": {"num": 2, "seconds": 0.01}})
    lines = []
    result = pretrain(recipe, echo=lines.append)
    run = result.run_dir
    assert (run / "export" / "config.json").is_file()
    report = json.loads((run / "audio_eval.json").read_text())
    assert [r["seq_len"] for r in report["bits_per_sample"]] == [128, 256]
    assert all(0 < r["bits_per_sample"] < 12 for r in report["bits_per_sample"])
    assert report["baselines"]["bigram_bits"] < report["baselines"]["unigram_bits"]
    assert report["samples"]["clips"]["generated"] == 2
    assert len(list((run / "samples").glob("clip_*.wav"))) == 2
    assert any("5 audio files used" in line for line in lines)
