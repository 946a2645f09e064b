"""Resumable verified downloads, against a local HTTP server (no network needed)."""
import base64
import hashlib
import http.server
import threading

import pytest

from typer.testing import CliRunner

from seqmamba.cli import app
from seqmamba.data import download as download_module
from seqmamba.data.download import DownloadError, RemoteFile, decompress_gzip, download

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /genome.bin with Range support; behaviour set on the server object."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(dict(self.headers))
        files = {"/genome.bin": srv.payload, **srv.extra_files}
        if self.path not in files:
            self.send_error(404, "Not Found")
            return
        data, start = files[self.path], 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        if srv.md5_header and self.path == "/genome.bin":
            md5 = base64.b64encode(hashlib.md5(srv.md5_of).digest()).decode()
            self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
        self.end_headers()
        body = data[start:]
        if srv.cut_after is not None and len(srv.requests) == 1:
            body = body[:srv.cut_after]  # then close: the client sees a short body
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.md5_of = PAYLOAD, PAYLOAD
    srv.requests, srv.honour_range, srv.md5_header, srv.cut_after = [], True, True, None
    srv.extra_files = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/genome.bin"
    yield srv
    srv.shutdown()
    srv.server_close()


def _quiet(_):
    pass


def test_download_verifies_server_md5_and_skips_when_done(server, tmp_path):
    dest = download(server.url, tmp_path / "g.bin", progress=False, echo=_quiet)
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "g.bin.sha256").read_text().split()[0] == hashlib.sha256(PAYLOAD).hexdigest()
    assert not (tmp_path / "g.bin.part").exists()
    n = len(server.requests)
    download(server.url, tmp_path / "g.bin", progress=False, echo=_quiet)
    assert len(server.requests) == n  # verified from the sidecar, nothing fetched


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.cut_after = 300_000
    dest = download(server.url, tmp_path / "g.bin", progress=False, echo=_quiet)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert server.requests[1]["Range"] == "bytes=300000-"


def test_partial_file_from_an_earlier_run_is_continued(server, tmp_path):
    (tmp_path / "g.bin.part").write_bytes(PAYLOAD[:123_456])
    dest = download(server.url, tmp_path / "g.bin", progress=False, echo=_quiet)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0]["Range"] == "bytes=123456-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.honour_range = False
    (tmp_path / "g.bin.part").write_bytes(b"garbage" * 1000)
    dest = download(server.url, tmp_path / "g.bin", progress=False, echo=_quiet)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_partial_file(server, tmp_path):
    server.md5_of = b"something else"
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download(server.url, tmp_path / "g.bin", progress=False, echo=_quiet)
    assert not (tmp_path / "g.bin").exists() and not (tmp_path / "g.bin.part").exists()
    # A caller-given checksum is checked too (and wins over the server's).
    server.md5_of = PAYLOAD
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download(server.url, tmp_path / "g.bin", md5="0" * 32, progress=False, echo=_quiet)


def test_http_error_is_one_clear_line(server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing.bin: HTTP 404"):
        download(server.url.replace("genome.bin", "missing.bin"), tmp_path / "m.bin",
                 progress=False, echo=_quiet)
    assert not (tmp_path / "m.bin").exists()


def test_decompress_is_atomic(tmp_path):
    import gzip

    src = tmp_path / "g.fa.gz"
    src.write_bytes(gzip.compress(b">chr1\nACGT\n"))
    assert decompress_gzip(src, tmp_path / "g.fa", progress=False).read_bytes() == b">chr1\nACGT\n"
    src.write_bytes(gzip.compress(b">chr1\nACGT\n")[:-6])  # truncated
    with pytest.raises(DownloadError, match="cannot decompress"):
        decompress_gzip(src, tmp_path / "h.fa", progress=False)
    assert not (tmp_path / "h.fa").exists() and not (tmp_path / "h.fa.part").exists()


def test_data_hg38_out_that_is_a_file_is_one_clear_line(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    result = CliRunner().invoke(app, ["data", "hg38", "--out", str(taken)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: --out {taken}: exists and is not a folder"  # was "[Errno 17] ..."
    assert taken.read_text() == "keep me\n"


def test_data_hg38_command_downloads_decompresses_and_indexes(server, tmp_path, monkeypatch):
    import gzip

    fasta = b">chr1\n" + b"ACGTNacgt" * 100 + b"\n>chr2\n" + b"GGCCAATT" * 50 + b"\n"
    server.extra_files = {"/hg38.ml.fa.gz": gzip.compress(fasta), "/seq.bed": b"chr1\t0\t900\ttrain\n"}
    server.cut_after = 40  # the first request (the genome) is cut short and resumed
    base = server.url.rsplit("/", 1)[0]
    monkeypatch.setitem(download_module.HG38_SOURCES, "basenji", [
        RemoteFile(f"{base}/hg38.ml.fa.gz", "hg38.ml.fa.gz", "genome"),
        RemoteFile(f"{base}/seq.bed", "sequences_human.bed", "intervals")])
    out = tmp_path / "hg38"
    result = CliRunner().invoke(app, ["data", "hg38", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "hg38.ml.fa").read_bytes() == fasta
    assert (out / "hg38.ml.fa.fai").exists() and not (out / "hg38.ml.fa.gz").exists()
    assert (out / "sequences_human.bed").read_text().startswith("chr1")
    assert "seqmamba pretrain recipes/hg38.yaml" in result.output
    # Run again: everything is there, nothing is downloaded.
    n = len(server.requests)
    assert CliRunner().invoke(app, ["data", "hg38", "--out", str(out)]).exit_code == 0
    assert len(server.requests) == n
