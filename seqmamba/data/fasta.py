"""Reading user FASTA files: plain, gzip or bgzip; one or many records; strict, readable errors.

Two ways in:

* ``iter_fasta(path)`` streams records (``FastaRecord``) in file order. It is what ``classify``,
  ``embed`` and ``probe`` use on user input. The compression is detected from the file's first
  bytes, not its name. Anything that is not a FASTA file (empty, binary, no ``>`` header, a
  truncated or corrupt gzip, a record without sequence, a character outside A/C/G/T/N/IUPAC)
  raises ``FastaError`` with one line naming the file (and the record) and what is wrong.
  Lowercase (soft-masked) bases are kept as they are: the tokenizers handle case.

* ``IndexedFasta(path)`` gives random access to windows of big genomes for training. Plain and
  bgzip files go through pyfaidx (an up-to-date ``.fai``/``.gzi`` beside the file is used; else
  the index is built once in the cache folder, so data folders are never written). Plain gzip cannot be indexed: files up to
  ``SEQMAMBA_GZIP_IN_MEMORY_MB`` (256 MB compressed by default) are decompressed into memory
  once; bigger ones are decompressed once into the cache folder (``SEQMAMBA_CACHE``, default
  ``~/.cache/seqmamba``) and indexed there. Recompressing with ``bgzip`` avoids both.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from Bio.SeqIO.FastaIO import SimpleFastaParser

from ..tokenizers.base import TokenizerError
from ..tokenizers.dna_alphabet import dna_codes

__all__ = [
    "FastaError", "FastaRecord", "detect_compression", "iter_fasta", "read_fasta", "IndexedFasta",
    "cache_dir", "as_records",
]

_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 1 << 16
# Errors the decompressors raise on a damaged stream; all become one FastaError line.
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError)


class FastaError(ValueError):
    """The input is not a readable FASTA file; the message is meant for the user as is."""


@dataclass(frozen=True)
class FastaRecord:
    id: str           # first word of the header, as samtools/pyfaidx name it
    description: str  # the whole header line without '>'
    sequence: str

    def __len__(self) -> int:
        return len(self.sequence)


def cache_dir() -> Path:
    """Where indexes and decompressed genomes go (never beside the user's data)."""
    root = os.environ.get("SEQMAMBA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seqmamba")
    return Path(root)


def detect_compression(path: str | os.PathLike) -> str:
    """'plain', 'gzip' or 'bgzip', from the magic bytes (a .gz name is not trusted)."""
    path = Path(path)
    if not path.exists():
        raise FastaError(f"{path}: no such file")
    if path.is_dir():
        raise FastaError(f"{path}: is a folder, expected a FASTA file")
    with open(path, "rb") as fh:
        head = fh.read(18)
    if not head.startswith(_GZIP_MAGIC):
        return "plain"
    # BGZF = gzip member with the FEXTRA flag and a 'BC' subfield (SAM/BAM spec, section 4.1).
    if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzip"
    return "gzip"


def _open_binary(path: Path, kind: str) -> IO[bytes]:
    # bgzip is a series of gzip members, so the gzip module streams both.
    return gzip.open(path, "rb") if kind in ("gzip", "bgzip") else open(path, "rb")


def _check_head(path: Path, kind: str) -> None:
    """Reject empty, binary and header-less input before parsing (the parser would silently
    return no records for the last two)."""
    try:
        with _open_binary(path, kind) as fh:
            head = fh.read(_SNIFF_BYTES)
    except _STREAM_ERRORS + (OSError,) as e:
        raise FastaError(f"{path}: {_describe_stream_error(e, kind)}") from None
    stripped = head.lstrip()
    if not stripped:
        raise FastaError(f"{path}: file is empty" + (" (after decompression)" if kind != "plain" else ""))
    if b"\x00" in head:
        raise FastaError(f"{path}: binary file, not FASTA text")
    if not stripped.startswith(b">"):
        first = stripped.splitlines()[0][:40].decode("utf-8", "replace")
        raise FastaError(f"{path}: no FASTA header: the first line must start with '>', found {first!r}")


def _describe_stream_error(e: BaseException, kind: str) -> str:
    if isinstance(e, EOFError):
        return f"truncated {kind} file (compressed data ends early)"
    if isinstance(e, UnicodeDecodeError):
        return f"binary file, not FASTA text (byte 0x{e.object[e.start]:02x} cannot be decoded)"
    if isinstance(e, (zlib.error, gzip.BadGzipFile)):
        return f"corrupt {kind} data ({e})"
    return f"cannot read ({e})"


def _checked_record(path: Path, header: str, seq: str, validate: bool) -> FastaRecord:
    header = header.strip()
    rid = header.split(None, 1)[0] if header else ""
    if not rid:
        raise FastaError(f"{path}: a record has an empty header line ('>' with no name)")
    if not seq:
        raise FastaError(f"{path}: record {rid!r} has no sequence")
    if validate:
        try:
            dna_codes(seq)
        except TokenizerError as e:
            raise FastaError(f"{path}: record {rid!r}: {e}") from None
    return FastaRecord(rid, header, seq)


def iter_fasta(path: str | os.PathLike, validate: bool = True) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA file (plain, gzip or bgzip). See the module doc for errors.

    Records are checked as they come, so an error in record 1000 is raised after records 1..999
    were yielded: callers that write output write it to a temporary file first.
    """
    path = Path(path)
    kind = detect_compression(path)
    _check_head(path, kind)
    n = 0
    try:
        with _open_binary(path, kind) as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
            for header, seq in SimpleFastaParser(text):
                n += 1
                yield _checked_record(path, header, seq, validate)
    except _STREAM_ERRORS as e:
        raise FastaError(f"{path}: {_describe_stream_error(e, kind)}") from None
    if n == 0:  # only reachable with a header-less remainder, kept as a safety net
        raise FastaError(f"{path}: no FASTA records found")


def read_fasta(path: str | os.PathLike, validate: bool = True) -> list[FastaRecord]:
    """All records of a FASTA file, in order."""
    return list(iter_fasta(path, validate=validate))


def as_records(source: str | os.PathLike | Iterable, validate: bool = True) -> list[FastaRecord]:
    """Sequences given any usual way, as records: a FASTA path; one sequence string; a list of
    sequence strings (ids seq0, seq1, ...); a list of ``(id, sequence)`` pairs or FastaRecords.

    A string is read as a path when such a file exists or it has a FASTA-like suffix, else it is
    taken as one sequence.
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        return read_fasta(source, validate=validate)
    items = [source] if isinstance(source, (str, bytes)) else list(source)
    records = []
    for i, item in enumerate(items):
        if isinstance(item, FastaRecord):
            rec = item
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            rec = FastaRecord(str(item[0]), str(item[0]), str(item[1]))
        elif isinstance(item, (str, bytes)):
            seq = item.decode("ascii", "replace") if isinstance(item, bytes) else item
            rec = FastaRecord(f"seq{i}", f"seq{i}", seq)
        else:
            raise FastaError(f"sequence {i}: expected a string, an (id, sequence) pair or a "
                             f"FastaRecord, got {type(item).__name__}")
        if not rec.sequence:
            raise FastaError(f"sequence {rec.id!r} is empty")
        if validate:
            try:
                dna_codes(rec.sequence)
            except TokenizerError as e:
                raise FastaError(f"sequence {rec.id!r}: {e}") from None
        records.append(rec)
    if not records:
        raise FastaError("no sequences given")
    return records


_FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas", ".fa.gz", ".fasta.gz", ".fna.gz",
                   ".fa.bgz", ".fasta.bgz", ".gz", ".bgz")


def _looks_like_path(s: str) -> bool:
    if os.sep in s or s.lower().endswith(_FASTA_SUFFIXES):
        return True
    try:
        return Path(s).is_file()
    except OSError:  # e.g. a 1 Mb sequence string is "file name too long"
        return False


# ---------------------------------------------------------------------------------------------
# Random access for training


def _cache_name(path: Path, suffix: str) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return cache_dir() / "fasta" / f"{path.name}.{hashlib.sha1(key).hexdigest()[:16]}{suffix}"


def _gzip_in_memory_limit() -> int:
    return int(float(os.environ.get("SEQMAMBA_GZIP_IN_MEMORY_MB", "256")) * 2**20)


def _index_matches_file(path: Path, fa) -> bool:
    """Check every record of a .fai against the file: right after the last base the indexed
    layout predicts, there must be only line breaks and then the next '>' or the end of file."""
    with open(path, "rb") as fh:
        for rec in fa.faidx.index.values():
            if rec.rlen == 0:
                continue
            full, rest = divmod(rec.rlen, rec.lenc)
            end = rec.offset + full * rec.lenb + rest if rest else \
                rec.offset + (full - 1) * rec.lenb + rec.lenc
            fh.seek(end)
            tail = fh.read(256).lstrip(b"\r\n")
            if tail and not tail.startswith(b">"):
                return False
    return True


class IndexedFasta:
    """Random access to ``fetch(name, start, end)`` (0-based, end exclusive, uppercase).

    Safe with forked DataLoader workers: pyfaidx's file handle is reopened in each process
    (a shared handle would interleave seeks between processes).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.compression = detect_compression(self.path)
        _check_head(self.path, self.compression)
        self._memory: dict[str, str] | None = None
        self._faidx_args: dict | None = None
        self._faidx = None
        self._pid = None
        if self.compression == "gzip":
            if self.path.stat().st_size <= _gzip_in_memory_limit():
                self._load_into_memory(self.path)
            else:
                self._open_faidx(self._decompressed_copy())
        else:
            self._open_faidx(self.path)

    # -- construction ----------------------------------------------------------------------
    def _load_into_memory(self, path: Path) -> None:
        self._memory = {}
        for rec in iter_fasta(path):
            if rec.id in self._memory:
                raise FastaError(f"{self.path}: duplicate record name {rec.id!r}")
            self._memory[rec.id] = rec.sequence.upper()
        self.lengths = {k: len(v) for k, v in self._memory.items()}

    def _decompressed_copy(self) -> Path:
        target = _cache_name(self.path, ".fa")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, gzip.open(self.path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                os.replace(tmp, target)
            except _STREAM_ERRORS as e:
                os.unlink(tmp)
                raise FastaError(f"{self.path}: {_describe_stream_error(e, 'gzip')}") from None
            except BaseException:
                os.unlink(tmp)
                raise
        return target

    def _open_faidx(self, path: Path) -> None:
        import pyfaidx

        args = dict(filename=str(path), as_raw=True, sequence_always_upper=True)
        # An up-to-date index beside the file (samtools faidx) is used as is; otherwise the index
        # is built in the cache, so data folders (often shared or read-only) are never written.
        beside = [Path(str(path) + ".fai")] + ([Path(str(path) + ".gzi")]
                                              if self.compression == "bgzip" else [])
        if not all(p.exists() and p.stat().st_mtime >= path.stat().st_mtime for p in beside):
            (cache_dir() / "fasta").mkdir(parents=True, exist_ok=True)
            args["indexname"] = str(_cache_name(path, ".fai"))
            if self.compression == "bgzip":
                args["gzi_indexname"] = str(_cache_name(path, ".gzi"))
        try:
            fa = pyfaidx.Fasta(**args)
        except pyfaidx.FastaIndexingError as e:
            if self.compression == "bgzip":
                raise FastaError(f"{self.path}: cannot index ({e})") from None
            # Lines of unequal length cannot be indexed; such files are read into memory.
            self._load_into_memory(path)
            return
        except _STREAM_ERRORS as e:
            raise FastaError(f"{self.path}: {_describe_stream_error(e, self.compression)}") from None
        if self.compression == "plain" and not _index_matches_file(path, fa):
            # pyfaidx accepts a last line *longer* than the others and then mis-reads the
            # record; such files are read into memory instead.
            fa.close()
            self._load_into_memory(path)
            return
        self._faidx_args, self._faidx, self._pid = args, fa, os.getpid()
        self.lengths = {name: len(fa[name]) for name in fa.keys()}

    # -- access ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.lengths)

    def _fa(self):
        if self._pid != os.getpid():
            import pyfaidx
            self._faidx = pyfaidx.Fasta(**self._faidx_args)
            self._pid = os.getpid()
        return self._faidx

    def fetch(self, name: str, start: int, end: int) -> str:
        length = self.lengths[name]
        if not 0 <= start <= end <= length:
            raise IndexError(f"{name}:{start}-{end} is outside 0-{length}")
        if self._memory is not None:
            return self._memory[name][start:end]
        return self._fa()[name][start:end]

    def __getstate__(self):  # pickled into spawned workers: reopen there
        state = dict(self.__dict__)
        state["_faidx"], state["_pid"] = None, None
        return state

    def __repr__(self) -> str:
        how = "memory" if self._memory is not None else "pyfaidx"
        return f"IndexedFasta({str(self.path)!r}, {len(self.lengths)} records, {how})"
