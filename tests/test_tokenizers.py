"""Tests for seqmamba.tokenizers: round trips, reverse complement, errors, batching, registry."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqmamba.tokenizers import (BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID, DNAByteTokenizer,
                                 DNACharTokenizer, DNAKmerTokenizer, MuLawTokenizer, TOKENIZERS,
                                 TokenizerError, get_tokenizer, reverse_complement,
                                 tokenizer_from_config)

FAST = settings(max_examples=40, deadline=None)
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DNA = REPO_ROOT.parent / "shared" / "data" / "dna"

acgt = st.text(alphabet="ACGT", max_size=200)
acgtn = st.text(alphabet="ACGTN", max_size=200)
dna_any_case = st.text(alphabet="ACGTNacgtnRYKMSWBDHVrykmswbdhv", max_size=200)


def naive_kmer_ids(seq: str, k: int, stride: int) -> list[int]:
    """Per-k-mer Python reference (tail dropped) for checking the vectorised encoder."""
    out = []
    for start in range(0, len(seq) - k + 1, stride):
        kmer = seq[start:start + k].upper()
        if any(c not in "ACGT" for c in kmer):
            out.append(UNK_ID)
        else:
            out.append(5 + sum("ACGT".index(c) * 4 ** (k - 1 - j) for j, c in enumerate(kmer)))
    return out


# ---------------------------------------------------------------- character tokenizer

def test_char_vocabulary_is_fixed():
    tok = DNACharTokenizer()
    assert tok.vocab_size == 10 and tok.pad_id == PAD_ID == 0
    assert (BOS_ID, EOS_ID, MASK_ID, UNK_ID) == (1, 2, 3, 4)
    assert [tok.id_to_token(i) for i in range(10)] == [
        "[PAD]", "[BOS]", "[EOS]", "[MASK]", "[UNK]", "A", "C", "G", "T", "N"]
    assert tok.encode("ACGTN").tolist() == [5, 6, 7, 8, 9]
    assert tok.encode("ACGTN").dtype == torch.int64


@FAST
@given(seq=acgtn, specials=st.booleans())
def test_char_round_trip(seq, specials):
    tok = DNACharTokenizer(add_special_tokens=specials)
    ids = tok.encode(seq)
    assert len(ids) == len(seq) + 2 * specials
    if specials:
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tok.decode(ids) == seq


def test_char_lowercase_and_soft_mask():
    tok = DNACharTokenizer(add_special_tokens=True)
    ids, mask = tok.encode("ACgtNn", return_soft_mask=True)
    assert ids.tolist() == tok.encode("ACGTNN").tolist()
    assert mask.dtype == torch.bool
    assert mask.tolist() == [False, False, False, True, True, False, True, False]


@pytest.mark.parametrize("code", list("RYKMSWBDHV"))
def test_char_iupac_maps_to_n(code):
    tok = DNACharTokenizer()
    assert tok.encode(f"A{code}{code.lower()}").tolist() == [5, 9, 9]


@pytest.mark.parametrize("seq, char, pos", [
    ("ACGTX", "'X'", 4), ("AC GT", "' '", 2), ("ACG\nT", "'\\n'", 3), ("-ACGT", "'-'", 0),
    ("ACUG", "'U'", 2), ("ACGé", "'é'", 3),
])
def test_char_invalid_character_named_with_position(seq, char, pos):
    with pytest.raises(TokenizerError, match=rf"character {re.escape(char)} at position {pos}\b"):
        DNACharTokenizer().encode(seq)


def test_invalid_bytes_and_far_position_in_long_sequence():
    with pytest.raises(TokenizerError, match=r"byte 0xff at position 2\b"):
        DNACharTokenizer().encode(b"AC\xffGT")
    seq = "ACGT" * 250_000 + "ACGZ" + "Q" * 10
    with pytest.raises(TokenizerError, match=r"'Z' at position 1000003\b.*11 invalid"):
        DNACharTokenizer().encode(seq)
    with pytest.raises(TokenizerError, match=r"'Z' at position 1000003\b"):
        DNAKmerTokenizer(k=3).encode(seq)
    assert issubclass(TokenizerError, ValueError)


def test_char_invalid_unk_option_and_inputs():
    tok = DNACharTokenizer(invalid="unk")
    assert tok.encode("AXc").tolist() == [5, UNK_ID, 6]
    # bytes, uint8 arrays and Biopython Seq objects are accepted like str
    from Bio.Seq import Seq
    ref = DNACharTokenizer().encode("ACGT").tolist()
    for seq in (b"ACGT", np.frombuffer(b"ACGT", np.uint8), Seq("ACGT")):
        assert DNACharTokenizer().encode(seq).tolist() == ref
    with pytest.raises(TokenizerError, match="expected a DNA sequence"):
        DNACharTokenizer().encode(1234)


def test_char_decode_specials_and_errors():
    tok = DNACharTokenizer()
    ids = torch.tensor([BOS_ID, 5, MASK_ID, 8, EOS_ID, PAD_ID])
    assert tok.decode(ids) == "AT"
    assert tok.decode(ids, skip_special_tokens=False) == "[BOS]A[MASK]T[EOS][PAD]"
    assert tok.decode(torch.tensor([[5, 6], [7, 0]])) == ["AC", "G"]
    with pytest.raises(TokenizerError, match=r"token id 10 at position 1 is outside"):
        tok.decode([5, 10])


# ---------------------------------------------------------------- k-mer tokenizer

@FAST
@given(data=st.data(), k=st.integers(1, 8))
def test_kmer_overlapping_round_trip(data, k):
    seq = data.draw(st.text(alphabet="ACGT", min_size=k, max_size=120))
    tok = DNAKmerTokenizer(k=k, stride=1)
    ids = tok.encode(seq)
    assert len(ids) == len(seq) - k + 1
    assert tok.decode(ids) == seq


@FAST
@given(data=st.data(), k=st.integers(1, 8))
def test_kmer_non_overlapping_round_trip(data, k):
    n = data.draw(st.integers(0, 30))
    seq = data.draw(st.text(alphabet="ACGT", min_size=n * k, max_size=n * k))
    tok = DNAKmerTokenizer(k=k, stride=k, tail="error")
    ids = tok.encode(seq)
    assert len(ids) == n
    assert tok.decode(ids) == seq


@FAST
@given(data=st.data(), k=st.integers(1, 6))
def test_kmer_matches_naive_reference(data, k):
    stride = data.draw(st.integers(1, k))
    seq = data.draw(st.text(alphabet="ACGTNacgtnRy", max_size=80))
    tok = DNAKmerTokenizer(k=k, stride=stride, tail="drop")
    assert tok.encode(seq).tolist() == naive_kmer_ids(seq, k, stride)


def test_kmer_vocab_and_n_handling():
    tok = DNAKmerTokenizer(k=3, stride=1)
    assert tok.vocab_size == 4 ** 3 + 5 and tok.pad_id == 0
    assert tok.id_to_token(5) == "AAA" and tok.id_to_token(4 ** 3 + 4) == "TTT"
    assert tok.token_to_id("ACG") == 5 + 0 * 16 + 1 * 4 + 2
    ids = tok.encode("ACGNACG")
    assert ids.tolist() == [tok.token_to_id("ACG"), UNK_ID, UNK_ID, UNK_ID, tok.token_to_id("ACG")]
    assert tok.token_to_id("ANA") == UNK_ID
    # every window containing N is unknown; decode gives N exactly there
    assert tok.decode(ids) == "ACGNACG"
    assert DNAKmerTokenizer(k=2).decode(DNAKmerTokenizer(k=2).encode("ACNNGT")) == "ACNNGT"


def test_kmer_tail_modes():
    seq = "ACGTACGTA"  # 9 bases, k=4 non-overlapping: 2 windows + 1 leftover base
    pad, drop = DNAKmerTokenizer(k=4), DNAKmerTokenizer(k=4, tail="drop")
    assert pad.tail == "pad"  # documented default
    assert pad.encode(seq).tolist() == drop.encode(seq).tolist() + [UNK_ID]
    assert drop.decode(drop.encode(seq)) == "ACGTACGT"
    assert pad.decode(pad.encode(seq)) == "ACGTACGTNNNN"
    with pytest.raises(TokenizerError, match=r"length 9 leaves 1 trailing bases"):
        DNAKmerTokenizer(k=4, tail="error").encode(seq)
    # overlapping windows only have a tail when the sequence is shorter than k
    assert len(DNAKmerTokenizer(k=4, stride=1, tail="error").encode(seq)) == 6
    assert DNAKmerTokenizer(k=4, stride=1).encode("ACG").tolist() == [UNK_ID]
    assert DNAKmerTokenizer(k=4, stride=1, tail="drop").encode("ACG").tolist() == []
    assert DNAKmerTokenizer(k=4, tail="error").encode("").tolist() == []
    # stride between 1 and k: the padded tail completes exactly one more window
    assert len(DNAKmerTokenizer(k=4, stride=3).encode("ACGTACGT")) == 3
    assert DNAKmerTokenizer(k=4, stride=3, tail="error").encode("ACGTACG").tolist() == \
        naive_kmer_ids("ACGTACG", 4, 3)


@pytest.mark.parametrize("kwargs, msg", [
    ({"k": 0}, "k must be"), ({"k": 9}, "k must be"), ({"k": 3, "stride": 4}, "stride must be"),
    ({"k": 3, "stride": 0}, "stride must be"), ({"k": 3, "tail": "keep"}, "tail must be"),
    ({"k": 3, "invalid": "skip"}, "invalid must be"),
])
def test_kmer_bad_options(kwargs, msg):
    with pytest.raises(TokenizerError, match=msg):
        DNAKmerTokenizer(**kwargs)


# ---------------------------------------------------------------- byte tokenizer

@FAST
@given(text=st.text(max_size=100), specials=st.booleans())
def test_byte_round_trip_text(text, specials):
    tok = DNAByteTokenizer(add_special_tokens=specials)
    ids = tok.encode(text)
    assert tok.vocab_size == 261 and len(ids) == len(text.encode()) + 2 * specials
    assert tok.decode(ids) == text


@FAST
@given(data=st.binary(max_size=100))
def test_byte_round_trip_bytes(data):
    tok = DNAByteTokenizer()
    assert tok.decode(tok.encode(data), as_bytes=True) == data


def test_byte_keeps_case_and_specials():
    tok = DNAByteTokenizer()
    assert tok.encode("Aa").tolist() == [ord("A") + 5, ord("a") + 5]
    assert tok.decode([BOS_ID, ord("A") + 5, MASK_ID], skip_special_tokens=False) == "[BOS]A[MASK]"


# ---------------------------------------------------------------- reverse complement

def test_reverse_complement_strings():
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement("acgT") == "Acgt"  # soft mask kept
    assert reverse_complement("RYKMSWBDHV") == "BDHVWSKMRY"
    assert reverse_complement("") == ""
    with pytest.raises(TokenizerError, match=r"'X' at position 2\b"):
        reverse_complement("ACXT")


@FAST
@given(seq=dna_any_case)
def test_reverse_complement_string_involution(seq):
    rc = reverse_complement(seq)
    assert len(rc) == len(seq) and reverse_complement(rc) == seq


TOKENIZER_FACTORIES = [
    lambda: DNACharTokenizer(add_special_tokens=True),
    lambda: DNAKmerTokenizer(k=3, stride=1, add_special_tokens=True),
    lambda: DNAKmerTokenizer(k=2, stride=2),
    lambda: DNAByteTokenizer(add_special_tokens=True),
]


@pytest.mark.parametrize("make", TOKENIZER_FACTORIES)
@FAST
@given(seqs=st.lists(st.text(alphabet="ACGTNacgt", max_size=40), min_size=1, max_size=4))
def test_reverse_complement_ids_involution_with_padding(make, seqs):
    tok = make()
    batch = tok.encode_batch(seqs)["input_ids"]
    stacked = torch.stack([batch, batch.flip(0)])  # extra leading dim
    rc = tok.reverse_complement_ids(stacked)
    assert rc.shape == stacked.shape and rc.dtype == stacked.dtype
    frame = (stacked == PAD_ID) | (stacked == BOS_ID) | (stacked == EOS_ID)
    assert torch.equal(rc[frame], stacked[frame])  # pad/bos/eos stay in place
    assert torch.equal(tok.reverse_complement_ids(rc), stacked)


@FAST
@given(seq=st.text(alphabet="ACGTNacgt", max_size=60))
def test_reverse_complement_ids_matches_string_rc(seq):
    for tok in (DNACharTokenizer(add_special_tokens=True),
                DNAKmerTokenizer(k=3, stride=1, tail="drop", add_special_tokens=True),
                DNAByteTokenizer()):
        assert tok.reverse_complement_ids(tok.encode(seq)).tolist() == \
            tok.encode(reverse_complement(seq)).tolist()
    # non-overlapping k-mers: exact when the length is a multiple of k
    tok = DNAKmerTokenizer(k=3, tail="drop")
    fit = seq[:len(seq) // 3 * 3]
    assert tok.reverse_complement_ids(tok.encode(fit)).tolist() == \
        tok.encode(reverse_complement(fit)).tolist()


def test_reverse_complement_ids_examples():
    char = DNACharTokenizer()
    ids = torch.tensor([BOS_ID, 5, 6, MASK_ID, 9, EOS_ID, PAD_ID], dtype=torch.int32)
    # A C [MASK] N -> N [MASK] G T, frame kept, dtype kept
    assert char.reverse_complement_ids(ids).tolist() == [BOS_ID, 9, MASK_ID, 7, 8, EOS_ID, PAD_ID]
    assert char.reverse_complement_ids(ids).dtype == torch.int32
    kmer = DNAKmerTokenizer(k=4)
    assert kmer.reverse_complement_ids(kmer.encode("AACG")).tolist() == kmer.encode("CGTT").tolist()
    with pytest.raises(TokenizerError, match=r"token id 10 at position 1"):
        char.reverse_complement_ids(torch.tensor([5, 10]))


# ---------------------------------------------------------------- mu-law

def mulaw_bound(x: torch.Tensor, bits: int) -> torch.Tensor:
    mu = 2 ** bits - 1
    return (x.abs() + 1 / mu) * ((1 + mu) ** (1 / mu) - 1) + 1e-6


@FAST
@given(values=st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=1, max_size=64),
       bits=st.sampled_from([4, 8, 12]))
def test_mulaw_round_trip_within_quantisation_error(values, bits):
    tok = MuLawTokenizer(bits=bits)
    x = torch.tensor(values, dtype=torch.float32)
    ids = tok.encode(x)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < 2 ** bits
    y = tok.decode(ids)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert bool(((y - x).abs() <= mulaw_bound(x, bits)).all())


def test_mulaw_layout_clipping_and_errors():
    tok = MuLawTokenizer()
    assert tok.vocab_size == 257 and tok.pad_id == 256
    x = torch.tensor([[-3.0, -1.0, 0.0], [1.0, 2.5, 0.25]])
    ids = tok.encode(x)
    assert ids.shape == (2, 3)
    assert ids[0, 0] == ids[0, 1] == 0 and ids[1, 0] == ids[1, 1] == 255  # clipped
    assert tok.encode(np.array([0.5], np.float64)).tolist() == tok.encode([0.5]).tolist()
    with pytest.raises(TokenizerError, match=r"non-finite sample \(nan\) at position 2"):
        tok.encode([0.0, 0.1, float("nan")])
    with pytest.raises(TokenizerError, match="float waveform"):
        tok.encode(torch.tensor([1, 2], dtype=torch.int16))
    with pytest.raises(TokenizerError, match=r"code 256 at position 1 .*pad_id=256"):
        tok.decode(torch.tensor([3, 256]))
    with pytest.raises(TokenizerError, match="bits must be"):
        MuLawTokenizer(bits=1)
    with pytest.raises(TokenizerError, match="not text"):  # a DNA string given to an audio model
        tok.encode_batch(["ACGT"])
    batch = tok.encode_batch([torch.zeros(3), torch.zeros(1)])
    assert batch["input_ids"].tolist() == [[128, 128, 128], [128, 256, 256]]
    assert batch["attention_mask"].tolist() == [[True] * 3, [True, False, False]]


# ---------------------------------------------------------------- batching

def test_encode_batch_padding_and_mask():
    tok = DNACharTokenizer(add_special_tokens=True)
    out = tok.encode_batch(["ACGT", "Ac", ""], return_soft_mask=True)
    assert out["input_ids"].dtype == torch.int64 and out["attention_mask"].dtype == torch.bool
    assert out["input_ids"].tolist() == [[1, 5, 6, 7, 8, 2], [1, 5, 6, 2, 0, 0], [1, 2, 0, 0, 0, 0]]
    assert out["attention_mask"].sum(1).tolist() == [6, 4, 2]
    assert out["soft_mask"].tolist()[1] == [False, False, True, False, False, False]


def test_encode_batch_truncation_and_max_length():
    tok = DNACharTokenizer(add_special_tokens=True)
    with pytest.raises(TokenizerError, match=r"sequence 1 has 7 tokens, more than max_length=5"):
        tok.encode_batch(["AC", "ACGTA"], max_length=5)
    out = tok.encode_batch(["AC", "ACGTA"], max_length=5, truncation=True)
    assert out["input_ids"].tolist() == [[1, 5, 6, 2, 0], [1, 5, 6, 7, 2]]  # eos kept
    out = tok.encode_batch(["AC"], max_length=6, padding="max_length")
    assert out["input_ids"].shape == (1, 6)
    with pytest.raises(TokenizerError, match="padding=False needs equal lengths"):
        tok.encode_batch(["AC", "A"], padding=False)
    assert tok.encode_batch(["AC", "GT"], padding=False)["input_ids"].shape == (2, 4)
    with pytest.raises(TokenizerError, match="need max_length"):
        tok.encode_batch(["AC"], truncation=True)
    with pytest.raises(TokenizerError, match="list of sequences"):
        tok.encode_batch("ACGT")
    empty = tok.encode_batch([])
    assert empty["input_ids"].shape == (0, 0)


def test_kmer_batch_truncation_counts_tokens():
    tok = DNAKmerTokenizer(k=2, stride=2)
    out = tok.encode_batch(["ACGTAC", "AC"], max_length=2, truncation=True)
    assert out["input_ids"].tolist() == [tok.encode("ACGT").tolist(), tok.encode("AC").tolist() + [0]]


# ---------------------------------------------------------------- registry

ALL_TOKENIZERS = [
    DNACharTokenizer(), DNACharTokenizer(add_special_tokens=True, invalid="unk"),
    DNAKmerTokenizer(k=5, stride=1, tail="drop"), DNAKmerTokenizer(k=8),
    DNAByteTokenizer(add_special_tokens=True), MuLawTokenizer(bits=10),
]


@pytest.mark.parametrize("tok", ALL_TOKENIZERS, ids=repr)
def test_registry_round_trip(tok):
    cfg = json.loads(json.dumps(tok.to_config()))  # JSON-able, as stored in checkpoints
    rebuilt = tokenizer_from_config(cfg)
    assert type(rebuilt) is type(tok) and rebuilt == tok and rebuilt.to_config() == cfg
    assert rebuilt.vocab_size == tok.vocab_size and rebuilt.pad_id == tok.pad_id
    assert get_tokenizer(cfg.pop("name"), **cfg) == tok


def test_registry_errors():
    assert set(TOKENIZERS) == {"dna_char", "dna_kmer", "dna_byte", "mulaw"}
    with pytest.raises(TokenizerError, match=r"unknown tokenizer 'bpe'.*dna_char"):
        get_tokenizer("bpe")
    with pytest.raises(TokenizerError, match=r"unknown option\(s\) kk for tokenizer 'dna_kmer'"):
        get_tokenizer("dna_kmer", kk=3)
    with pytest.raises(TokenizerError, match="'name' key"):
        tokenizer_from_config({"k": 3})
    assert DNAKmerTokenizer(k=3) != DNAKmerTokenizer(k=4)


def test_import_does_not_load_torchaudio():
    code = ("import sys, seqmamba.tokenizers, seqmamba.audio_io; "
            "assert 'torchaudio' not in sys.modules, 'torchaudio imported'; "
            "t = seqmamba.tokenizers.MuLawTokenizer(); assert 'torchaudio' not in sys.modules; "
            "t.encode([0.0]); assert 'torchaudio' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


# ---------------------------------------------------------------- real DNA

@pytest.mark.skipif(not (SHARED_DNA / "human_demo.fa").exists(), reason="shared DNA data absent")
def test_real_human_sequence():
    from Bio import SeqIO
    record = next(SeqIO.parse(SHARED_DNA / "human_demo.fa", "fasta"))
    seq = str(record.seq)
    tok = DNACharTokenizer()
    ids, soft = tok.encode(seq, return_soft_mask=True)
    assert tok.decode(ids) == seq.upper()
    assert int(soft.sum()) == sum(c.islower() for c in seq) > 0
    kmer = DNAKmerTokenizer(k=6, stride=1)
    assert kmer.decode(kmer.encode(seq)) == seq.upper()
    rc_ids = kmer.reverse_complement_ids(kmer.encode(seq))
    assert torch.equal(rc_ids, kmer.encode(reverse_complement(seq)))
