"""Resumable, verified downloads of public genome files (what ``seqmamba data`` runs).

A file is fetched to ``NAME.part`` and renamed to ``NAME`` only once complete and verified, so a
file under its final name is always whole. An interrupted download (lost connection, Ctrl-C, a
killed process) continues from the bytes already on disk with an HTTP Range request; a server
that ignores Range restarts it. The checksum checked is the one given by the caller, else the
one the server publishes (GCS ``x-goog-hash: md5=...`` or ``Content-MD5``); the sha256 of every
finished file is written beside it (``NAME.sha256``) so later runs skip it after re-hashing.
"""
from __future__ import annotations

import base64
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Optional

__all__ = ["DownloadError", "RemoteFile", "download", "file_digests", "HG38_SOURCES",
           "ucsc_md5", "decompress_gzip"]

CHUNK = 1 << 20
USER_AGENT = "seqmamba-data/1 (+https://pypi.org/project/seqmamba/)"


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and what went wrong."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    name: str                  # file name in the output folder
    description: str = ""
    md5: Optional[str] = None  # expected hex digest, when published


# The files HyenaDNA and the Mamba paper pretrain on: the Basenji/Enformer hg38 FASTA and the
# interval BED with its train/valid/test split (Kelley et al.; Avsec et al.), both in the public
# basenji_barnyard2 bucket; or UCSC's own hg38 FASTA (same chr1..chrX coordinates).
HG38_SOURCES = {
    "basenji": [
        RemoteFile("https://storage.googleapis.com/basenji_barnyard2/hg38.ml.fa.gz", "hg38.ml.fa.gz",
                   "hg38 genome, Basenji build (~0.9 GB gzip)"),
        RemoteFile("https://storage.googleapis.com/basenji_barnyard2/sequences_human.bed",
                   "sequences_human.bed", "Enformer intervals with train/valid/test split"),
    ],
    "ucsc": [
        RemoteFile("https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/hg38.fa.gz", "hg38.fa.gz",
                   "hg38 genome, UCSC (~0.95 GB gzip)"),
        RemoteFile("https://storage.googleapis.com/basenji_barnyard2/sequences_human.bed",
                   "sequences_human.bed", "Enformer intervals with train/valid/test split"),
    ],
}
UCSC_MD5SUM_URL = "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/md5sum.txt"


def file_digests(path: Path, algorithms=("md5", "sha256")) -> dict[str, str]:
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _server_md5(headers) -> Optional[str]:
    """The whole object's MD5 as hex, from GCS's x-goog-hash or a Content-MD5 header."""
    values = headers.get_all("x-goog-hash") or []
    for value in values:
        for part in value.split(","):
            key, _, b64 = part.strip().partition("=")
            if key == "md5" and b64:
                return base64.b64decode(b64).hex()
    content_md5 = headers.get("Content-MD5")
    if content_md5:
        return base64.b64decode(content_md5).hex()
    return None


def _total_size(response, offset: int) -> Optional[int]:
    rng = response.headers.get("Content-Range")  # "bytes 100-999/1000"
    if rng and "/" in rng and not rng.endswith("/*"):
        return int(rng.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _verified_existing(dest: Path) -> bool:
    side = _sidecar(dest)
    if not (dest.is_file() and side.is_file()):
        return False
    recorded = side.read_text().split()[0] if side.read_text().strip() else ""
    return file_digests(dest, ("sha256",))["sha256"] == recorded


def download(url: str, dest: str | os.PathLike, md5: Optional[str] = None, progress: bool = True,
             retries: int = 5, timeout: float = 60.0,
             echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Path:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``) and verify it; returns ``dest``.

    Raises DownloadError after ``retries`` consecutive failed attempts, on an HTTP error status,
    or on a checksum mismatch (the bad partial file is then deleted).
    """
    dest = Path(dest)
    if _verified_existing(dest):
        echo(f"{dest.name}: already downloaded and verified")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    expected_md5 = md5.lower() if md5 else None
    total = None
    bar = None
    try:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            if offset:
                request.add_header("Range", f"bytes={offset}-")
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as e:
                if e.code == 416 and offset:  # nothing left after offset: the part is complete
                    break
                if e.code >= 500 and failures < retries:
                    failures += 1
                    time.sleep(min(2 ** failures, 30) * 0.1)
                    continue
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, OSError, HTTPException) as e:
                failures += 1
                if failures > retries:
                    raise DownloadError(f"{url}: {getattr(e, 'reason', e)} (gave up after "
                                        f"{retries} retries; run again to resume)") from None
                time.sleep(min(2 ** failures, 30) * 0.1)
                continue
            with response:
                if offset and response.status == 200:
                    offset = 0  # the server ignored Range: start over
                mode = "ab" if offset else "wb"
                total = _total_size(response, offset) or total
                expected_md5 = expected_md5 or _server_md5(response.headers)
                if progress and bar is None:
                    from tqdm import tqdm
                    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                               unit_divisor=1024, desc=dest.name, file=sys.stderr, leave=True)
                elif bar is not None:
                    bar.reset(total=total)
                    bar.update(offset)
                try:
                    with open(part, mode) as out:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                            failures = 0
                except (OSError, HTTPException) as e:  # connection dropped mid-body: resume
                    failures += 1
                    if failures > retries:
                        raise DownloadError(f"{url}: connection lost ({e}); gave up after "
                                            f"{retries} retries; run again to resume") from None
                    continue
            size = part.stat().st_size
            if total is None or size >= total:
                break
            failures += 1  # the body ended early without an error: ask for the rest
            if failures > retries:
                raise DownloadError(f"{url}: got {size} of {total} bytes after {retries} retries; "
                                    "run again to resume")
    finally:
        if bar is not None:
            bar.close()

    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: local file has {size} bytes, the server says {total}; "
                            f"delete {part} and run again")
    digests = file_digests(part)
    if expected_md5 and digests["md5"] != expected_md5:
        part.unlink()
        raise DownloadError(f"{url}: MD5 mismatch (got {digests['md5']}, expected {expected_md5}); "
                            "the partial file was deleted, run again")
    os.replace(part, dest)
    _sidecar(dest).write_text(f"{digests['sha256']}  {dest.name}\n")
    echo(f"{dest.name}: {size:,} bytes, " + ("MD5 verified, " if expected_md5 else
                                             "no published checksum to verify, ")
         + f"sha256 {digests['sha256'][:16]}...")
    return dest


def ucsc_md5(name: str, timeout: float = 60.0, url: str = UCSC_MD5SUM_URL) -> Optional[str]:
    """The MD5 UCSC publishes for ``name`` in the hg38 bigZips md5sum.txt (None if absent)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, HTTPException) as e:
        raise DownloadError(f"{url}: {getattr(e, 'reason', e)}") from None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name:
            return parts[0].lower()
    return None


def decompress_gzip(src: Path, dest: Path, progress: bool = True) -> Path:
    """gunzip ``src`` to ``dest`` (through ``dest.part``, so ``dest`` is whole or absent)."""
    import gzip

    part = dest.with_name(dest.name + ".part")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=src.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"gunzip {src.name}", file=sys.stderr)
    try:
        with open(src, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz, open(part, "wb") as out:
            last = 0
            while chunk := gz.read(CHUNK * 4):
                out.write(chunk)
                if bar is not None:
                    pos = raw.tell()
                    bar.update(pos - last)
                    last = pos
        os.replace(part, dest)
    except (OSError, EOFError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{src}: cannot decompress ({e}); delete it and run again") from None
    finally:
        if bar is not None:
            bar.close()
    return dest
