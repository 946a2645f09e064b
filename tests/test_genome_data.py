"""Genome pipeline: BED parsing, the window rule (Mamba paper App. E.3), RC augmentation, splits."""
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmamba.data.genome import Genome, GenomeError, Intervals, read_bed, split_intervals
from seqmamba.data.windows import (GenomeLMSource, GenomeWindowDataset, evenly_spaced,
                                   make_windows)
from seqmamba.tokenizers import get_tokenizer, reverse_complement

REPO = Path(__file__).resolve().parents[1]
SAMPLE_FA = REPO / "datasets" / "human" / "human_sample.fa"
SAMPLE_BED = REPO / "datasets" / "human" / "human_sample.bed"
SHARED_DNA = REPO.parent / "shared" / "data" / "dna"


def _intervals(rows, names=("c0", "c1")):
    index = {n: i for i, n in enumerate(names)}
    return Intervals(tuple(names), np.array([index[r[0]] for r in rows], np.int32),
                     np.array([r[1] for r in rows], np.int64), np.array([r[2] for r in rows], np.int64))


def _windows_reference(rows, chrom_len, L):
    """The rule written out one interval at a time."""
    out = []
    for chrom, start, end in rows:
        n = chrom_len[chrom]
        if end - start >= L:
            out += [(chrom, start + k * L, start + (k + 1) * L) for k in range((end - start) // L)]
        else:
            first = min(start, max(n - L, 0))
            second = max(end - L, 0)
            pair = [(chrom, first, min(first + L, n)), (chrom, second, min(second + L, n))]
            out += pair[:1] if pair[0] == pair[1] else pair
    return out


@pytest.fixture
def genome(tmp_path):
    rng = np.random.default_rng(0)
    seqs = {"c0": "".join(rng.choice(list("ACGTacgt"), 3000)),
            "c1": "".join(rng.choice(list("ACGTN"), 700))}
    fa = tmp_path / "g.fa"
    fa.write_text("".join(f">{k}\n" + "\n".join(v[i:i + 60] for i in range(0, len(v), 60)) + "\n"
                          for k, v in seqs.items()))
    bed = tmp_path / "g.bed"
    bed.write_text("# header\ntrack name=x\nc0\t0\t1000\ttrain\nc0\t1000\t1300\ttrain\n"
                   "c0\t2500\t3000\tvalid\nc1\t100\t700\ttest\n")
    return Genome(fa, bed), seqs


def test_long_interval_yields_non_overlapping_subwindows():
    w = make_windows(_intervals([("c0", 100, 1100)]), np.array([5000, 10]), 300)
    assert w.start.tolist() == [100, 400, 700]  # the remainder 1000-1100 is dropped
    assert (w.end - w.start).tolist() == [300, 300, 300]


def test_short_interval_yields_window_at_start_and_window_ending_at_end():
    w = make_windows(_intervals([("c0", 1000, 1200)]), np.array([5000, 10]), 512)
    assert list(zip(w.start.tolist(), w.end.tolist())) == [(1000, 1512), (688, 1200)]


def test_short_interval_windows_are_clipped_to_the_chromosome():
    lengths = np.array([1500, 300])
    w = make_windows(_intervals([("c0", 1200, 1450), ("c0", 10, 100)]), lengths, 512)
    spans = list(zip(w.chrom.tolist(), w.start.tolist(), w.end.tolist()))
    # Near the end: the window "starting at" 1200 shifts back to end at 1500.
    assert spans[:2] == [(0, 988, 1500), (0, 938, 1450)]
    # Near the start: the window "ending at" 100 would start before 0.
    assert spans[2:] == [(0, 10, 522), (0, 0, 512)]
    # A chromosome shorter than L gives the whole chromosome once.
    w = make_windows(_intervals([("c1", 0, 300)]), lengths, 512)
    assert list(zip(w.start.tolist(), w.end.tolist())) == [(0, 300)]


@pytest.mark.parametrize("L", [1, 7, 64, 333, 1000, 5000])
def test_vectorised_windows_match_the_rule_interval_by_interval(L):
    rng = np.random.default_rng(L)
    chrom_len = {"c0": 4000, "c1": 900}
    rows = []
    for _ in range(40):
        chrom = "c0" if rng.random() < 0.7 else "c1"
        a, b = sorted(rng.integers(0, chrom_len[chrom] + 1, 2))
        if b > a:
            rows.append((chrom, int(a), int(b)))
    w = make_windows(_intervals(rows), np.array([4000, 900]), L)
    got = [(("c0", "c1")[c], s, e) for c, s, e in zip(w.chrom.tolist(), w.start.tolist(), w.end.tolist())]
    assert got == _windows_reference(rows, chrom_len, L)


def test_bed_parsing_and_errors(tmp_path):
    bed = tmp_path / "a.bed"
    bed.write_text("browser x\nchr1\t5\t10\ttrain\n\nchr2 0 4\n")
    assert read_bed(bed) == [("chr1", 5, 10, "train"), ("chr2", 0, 4, None)]
    bed.write_text("chr1\t10\t5\ttrain\n")
    with pytest.raises(GenomeError, match=r"a.bed:1: need 0 <= start < end"):
        read_bed(bed)
    bed.write_text("chr1\tx\t5\n")
    with pytest.raises(GenomeError, match=r"a.bed:1: start/end must be integers"):
        read_bed(bed)
    with pytest.raises(GenomeError, match="no such BED file"):
        read_bed(tmp_path / "missing.bed")
    with pytest.raises(GenomeError, match="is a folder"):
        read_bed(tmp_path)
    # A binary (e.g. gzipped) BED: a short line naming the problem, not the mangled bytes.
    import gzip
    bed.write_bytes(gzip.compress(b"chr1\t0\t5\ttrain\n" * 50))
    with pytest.raises(GenomeError, match=r"a.bed:1: binary data, not BED text") as err:
        read_bed(bed)
    assert len(str(err.value)) < 150


def test_genome_splits_and_consistency_checks(genome, tmp_path):
    g, seqs = genome
    assert g.splits == ["test", "train", "valid"]
    train = g.intervals("train")
    assert train.total_bases == 1300 and len(train) == 2
    with pytest.raises(GenomeError, match="no intervals with split 'dev'"):
        g.intervals("dev")
    assert g.fetch(0, 10, 20) == seqs["c0"][10:20].upper()
    bad = tmp_path / "bad.bed"
    bad.write_text("chrX\t0\t10\ttrain\n")
    with pytest.raises(GenomeError, match="'chrX', which .* does not have"):
        Genome(g.fasta.path, bad)
    bad.write_text("c1\t0\t800\ttrain\n")
    with pytest.raises(GenomeError, match="ends past the end of c1"):
        Genome(g.fasta.path, bad)


def test_lm_source_windows_and_reverse_complement_augmentation(genome):
    g, seqs = genome
    tok = get_tokenizer("dna_char")
    never = GenomeLMSource(g, g.intervals("train"), tok, rc_prob=0.0)
    always = GenomeLMSource(g, g.intervals("train"), tok, rc_prob=1.0)
    assert never.size(256) == 3 + 1  # 1000 // 256 + 300 // 256 sub-windows
    assert never.size(512) == 1 + 2  # the 300-base interval gives two windows at 512
    fwd = never.get(256, 1, np.random.default_rng(0))["input_ids"]
    assert torch.equal(fwd, tok.encode(seqs["c0"][256:512]))
    rc = always.get(256, 1, np.random.default_rng(0))["input_ids"]
    assert torch.equal(rc, tok.encode(reverse_complement(seqs["c0"][256:512])))
    half = GenomeLMSource(g, g.intervals("train"), tok, rc_prob=0.5)
    flips = [not torch.equal(half.get(256, 1, np.random.default_rng(s))["input_ids"], fwd)
             for s in range(400)]
    assert 0.4 < np.mean(flips) < 0.6
    # Same rng seed, same draw: the augmentation is reproducible.
    again = [not torch.equal(half.get(256, 1, np.random.default_rng(s))["input_ids"], fwd)
             for s in range(400)]
    assert flips == again


def test_fixed_validation_windows(genome):
    g, seqs = genome
    tok = get_tokenizer("dna_char")
    windows = make_windows(g.intervals("test"), g.chrom_lengths, 128)
    ds = GenomeWindowDataset(g, windows, tok)
    assert len(ds) == 600 // 128
    assert torch.equal(ds[0]["input_ids"], tok.encode(seqs["c1"][100:228]))
    assert tok.token_to_id("N") in torch.cat([ds[i]["input_ids"] for i in range(len(ds))]).tolist()
    sub = evenly_spaced(make_windows(g.intervals(None), g.chrom_lengths, 16), 10)
    assert len(sub) == 10 and sub.start[0] == 0


def test_split_intervals_holds_out_blocks_at_record_ends():
    rows = split_intervals([("a", 100_000), ("b", 5_000)], interval=8192, valid_frac=0.1,
                           test_frac=0.1, min_split_length=20_000)
    by = {s: [(r[1], r[2]) for r in rows if r[0] == "a" and r[3] == s] for s in ("train", "valid", "test")}
    assert by["train"][0] == (0, 8192) and by["train"][-1][1] == 80_000
    assert by["valid"] == [(80_000, 88_192), (88_192, 90_000)]
    assert by["test"][-1] == (98_192, 100_000)
    assert [r for r in rows if r[0] == "b"] == [("b", 0, 5_000, "train")]
    assert all(e - s <= 8192 for _, s, e, _ in rows)


def test_bundled_human_sample_is_a_usable_genome():
    g = Genome(SAMPLE_FA, SAMPLE_BED)
    assert sum(g.chrom_lengths) == 101_674
    assert g.splits == ["test", "train", "valid"]
    assert len(make_windows(g.intervals("valid"), g.chrom_lengths, 512)) >= 16
    assert (REPO / "datasets" / "human" / "PROVENANCE.md").is_file()


@pytest.mark.skipif(not (SHARED_DNA / "human_demo.fa").exists(), reason="shared DNA folder absent")
def test_bundled_sample_matches_its_source():
    assert SAMPLE_FA.read_bytes() == (SHARED_DNA / "human_demo.fa").read_bytes()
