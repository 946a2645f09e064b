"""FASTA reading for user input (seqmamba.data.fasta): formats, edge cases, random access."""
import gzip
import os

import pytest

from seqmamba.data.fasta import (FastaError, FastaRecord, IndexedFasta, as_records,
                                 detect_compression, iter_fasta, read_fasta)

TEXT = b">chr1 first record\nACGTacgtNN\nRYKMSWBDHV\n\n>chr2\nggggCCCC\n>chr3 x\nA\n"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMAMBA_CACHE", str(tmp_path / "cache"))


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def bgzip(data: bytes, path):
    from Bio import bgzf
    with bgzf.BgzfWriter(str(path), "wb") as w:
        w.write(data)
    return path


def test_multi_record_keeps_case_and_iupac(tmp_path):
    recs = read_fasta(write(tmp_path / "a.fa", TEXT))
    assert [r.id for r in recs] == ["chr1", "chr2", "chr3"]
    assert recs[0].description == "chr1 first record"
    assert recs[0].sequence == "ACGTacgtNNRYKMSWBDHV"  # lines joined, blank line ignored
    assert recs[1].sequence == "ggggCCCC" and len(recs[2]) == 1


def test_gzip_and_bgzip_read_the_same(tmp_path):
    plain = read_fasta(write(tmp_path / "a.fa", TEXT))
    gz = write(tmp_path / "a.fa.gz", gzip.compress(TEXT))
    bgz = bgzip(TEXT, tmp_path / "b.fa.gz")
    assert detect_compression(tmp_path / "a.fa") == "plain"
    assert detect_compression(gz) == "gzip"
    assert detect_compression(bgz) == "bgzip"
    assert read_fasta(gz) == plain == read_fasta(bgz)


def test_compression_detected_from_content_not_name(tmp_path):
    path = write(tmp_path / "really_plain.fa.gz", TEXT)
    assert detect_compression(path) == "plain"
    assert len(read_fasta(path)) == 3


def test_windows_line_endings(tmp_path):
    recs = read_fasta(write(tmp_path / "crlf.fa", TEXT.replace(b"\n", b"\r\n")))
    assert recs[0].sequence == "ACGTacgtNNRYKMSWBDHV"


@pytest.mark.parametrize("name,data,message", [
    ("empty.fa", b"", "file is empty"),
    ("blank.fa", b"\n  \n\n", "file is empty"),
    ("empty.fa.gz", gzip.compress(b""), "file is empty (after decompression)"),
    ("nohdr.fa", b"ACGTACGT\n>later\nAC\n", "no FASTA header"),
    ("binary.fa", bytes(range(256)) * 4, "binary file"),
    ("latin1.fa", b">a\nAC\xe9GT\n", "binary file"),
    ("trunc.fa.gz", gzip.compress(TEXT * 200)[:60], "truncated gzip file"),
    ("badchar.fa", b">a\nACGT\n>b\nAC1T\n", "record 'b': invalid DNA character '1' at position 2"),
    ("norecseq.fa", b">a\n>b\nACGT\n", "record 'a' has no sequence"),
    ("noname.fa", b">\nACGT\n", "empty header line"),
])
def test_bad_input_is_one_clear_error(tmp_path, name, data, message):
    path = write(tmp_path / name, data)
    with pytest.raises(FastaError) as err:
        read_fasta(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_truncated_gzip_at_the_end_of_the_stream(tmp_path):
    data = gzip.compress(b">a\n" + b"ACGT" * 20000 + b"\n")
    with pytest.raises(FastaError, match="truncated gzip"):
        read_fasta(write(tmp_path / "t.fa.gz", data[:-8]))  # only the gzip trailer is missing


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(b">a\n" + bytes(os.urandom(3000)).hex().upper().replace("E", "A").encode()))
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    with pytest.raises(FastaError, match="gzip"):
        read_fasta(write(tmp_path / "c.fa.gz", bytes(data)))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FastaError, match="no such file"):
        read_fasta(tmp_path / "nope.fa")
    with pytest.raises(FastaError, match="is a folder"):
        read_fasta(tmp_path)


def test_errors_surface_after_earlier_records(tmp_path):
    path = write(tmp_path / "late.fa", b">ok\nACGT\n>bad\nAC*GT\n")
    it = iter_fasta(path)
    assert next(it).id == "ok"
    with pytest.raises(FastaError, match="record 'bad'"):
        next(it)


def test_as_records_accepts_the_usual_forms(tmp_path):
    path = write(tmp_path / "a.fa", TEXT)
    assert [r.id for r in as_records(path)] == ["chr1", "chr2", "chr3"]
    assert [r.id for r in as_records(str(path))] == ["chr1", "chr2", "chr3"]
    recs = as_records(["ACGT", "ggnn"])
    assert [(r.id, r.sequence) for r in recs] == [("seq0", "ACGT"), ("seq1", "ggnn")]
    assert as_records("ACGTN")[0].sequence == "ACGTN"
    assert as_records([("x", "AC")])[0] == FastaRecord("x", "x", "AC")
    with pytest.raises(FastaError, match="empty"):
        as_records(["ACGT", ""])
    with pytest.raises(FastaError, match="invalid DNA character"):
        as_records(["ACXT"])
    with pytest.raises(FastaError, match="no sequences"):
        as_records([])


# ---- random access ------------------------------------------------------------------------------

def test_indexed_plain_uses_pyfaidx_and_never_writes_beside_the_data(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = write(data_dir / "g.fa", b">c1\n" + b"ACGTACGTAC\n" * 5 + b">c2\nnnnnaaaa\n")
    fa = IndexedFasta(path)
    assert fa._memory is None  # indexed, not loaded
    assert fa.lengths == {"c1": 50, "c2": 8}
    assert fa.fetch("c1", 8, 13) == "ACACG"  # across a line break
    assert fa.fetch("c2", 0, 8) == "NNNNAAAA"  # uppercase
    assert sorted(os.listdir(data_dir)) == ["g.fa"]
    assert any(p.suffix == ".fai" for p in (tmp_path / "cache" / "fasta").iterdir())
    with pytest.raises(IndexError):
        fa.fetch("c1", 45, 51)


def test_indexed_gzip_bgzip_and_ragged_lines_agree(tmp_path, monkeypatch):
    body = b">c1 d\n" + b"ACGTACGTAC\n" * 5 + b">c2\nacgtnn\n"
    seq = b"ACGTACGTAC" * 5
    ragged = b">c1 d\n" + seq[:7] + b"\n" + seq[7:] + b"\n>c2\nacgtnn\n"  # last line longer
    expect = {"c1": 50, "c2": 6}
    gz = IndexedFasta(write(tmp_path / "a.fa.gz", gzip.compress(body)))
    bgz = IndexedFasta(bgzip(body, tmp_path / "b.fa.gz"))
    short_mid = b">c1 d\n" + seq[:10] + b"\n" + seq[10:15] + b"\n" + seq[15:] + b"\n>c2\nacgtnn\n"
    # Lines of unequal length cannot be indexed: such files are read into memory.
    rag = IndexedFasta(write(tmp_path / "r.fa", ragged))
    mid = IndexedFasta(write(tmp_path / "m.fa", short_mid))
    assert gz._memory is not None and bgz._memory is None
    assert rag._memory is not None and mid._memory is not None
    for fa in (gz, bgz, rag, mid):
        assert fa.lengths == expect
        assert fa.fetch("c1", 3, 12) == "TACGTACAC"
        assert fa.fetch("c2", 2, 6) == "GTNN"
    # Big plain-gzip genomes are decompressed once into the cache and indexed there.
    monkeypatch.setenv("SEQMAMBA_GZIP_IN_MEMORY_MB", "0")
    big = IndexedFasta(tmp_path / "a.fa.gz")
    assert big._memory is None and big.fetch("c1", 3, 12) == "TACGTACAC"


def test_indexed_rejects_bad_files(tmp_path):
    with pytest.raises(FastaError, match="no FASTA header"):
        IndexedFasta(write(tmp_path / "n.fa", b"ACGT\n"))
    with pytest.raises(FastaError, match="truncated"):
        IndexedFasta(write(tmp_path / "t.fa.gz", gzip.compress(TEXT * 100)[:50]))
