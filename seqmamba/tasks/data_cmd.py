"""``seqmamba data``: download public training data.

    seqmamba data hg38 --out data/hg38                 # Basenji hg38.ml.fa + sequences_human.bed
    seqmamba data hg38 --out data/hg38 --source ucsc   # UCSC hg38.fa instead (same coordinates)
    seqmamba data bed genome.fa --out genome.bed       # a train/valid/test BED for any genome

Downloads resume after an interruption (run the same command again), are checked against the
published MD5 when the server gives one, and the genome is decompressed to plain FASTA and
indexed (``.fai``) so training reads it by random access.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["register", "fetch_hg38"]


def fetch_hg38(out: Path, source: str = "basenji", keep_gz: bool = False, progress: bool = True,
               echo=print) -> dict[str, Path]:
    """Download (or finish downloading) the hg38 genome and BED into ``out``; returns the paths
    of the plain FASTA and the BED."""
    from ..data.download import (HG38_SOURCES, DownloadError, decompress_gzip, download,
                                 ucsc_md5)

    if source not in HG38_SOURCES:
        raise ValueError(f"--source must be one of {', '.join(HG38_SOURCES)}, got {source!r}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for remote in HG38_SOURCES[source]:
        target = out / remote.name
        fasta = target.with_name(target.name[:-len(".gz")])
        if remote.name.endswith(".fa.gz") and fasta.exists():
            # Decompressed earlier (written under its name only once complete).
            echo(f"{fasta.name}: already there")
            paths[remote.name] = target
            continue
        md5 = remote.md5
        if md5 is None and source == "ucsc" and remote.name.endswith(".fa.gz"):
            md5 = ucsc_md5(remote.name)  # UCSC publishes md5sum.txt beside the files
        echo(f"{remote.name}: {remote.description}\n  from {remote.url}")
        paths[remote.name] = download(remote.url, out / remote.name, md5=md5, progress=progress,
                                      echo=echo)
    genome_gz = next(p for name, p in paths.items() if name.endswith(".fa.gz"))
    fasta = out / genome_gz.name[:-len(".gz")]
    if not fasta.exists():
        decompress_gzip(genome_gz, fasta, progress=progress)
    if not keep_gz:
        genome_gz.unlink(missing_ok=True)  # its .sha256 stays: the record of what was fetched
    if Path(str(fasta) + ".fai").exists():
        return {"fasta": fasta, "bed": out / "sequences_human.bed"}
    echo(f"indexing {fasta.name} ...")
    try:
        import pyfaidx
        pyfaidx.Fasta(str(fasta)).close()  # writes FASTA.fai beside it
    except Exception as e:
        raise DownloadError(f"{fasta}: cannot index ({e})") from None
    return {"fasta": fasta, "bed": out / "sequences_human.bed"}


def register(app) -> None:
    import sys

    import typer

    data_app = typer.Typer(no_args_is_help=True, help="Download public training data.")
    app.add_typer(data_app, name="data")
    from ..data.piano_render import register_piano_command
    register_piano_command(data_app)  # `seqmamba data piano`: offline piano corpus

    @data_app.command("hg38")
    def hg38_cmd(
        out: Path = typer.Option(..., "--out", help="Folder for the files (created if needed)."),
        source: str = typer.Option("basenji", help="basenji (hg38.ml.fa, as HyenaDNA) or ucsc (hg38.fa)."),
        keep_gz: bool = typer.Option(False, "--keep-gz", help="Keep the .fa.gz after decompressing."),
    ):
        """Human genome hg38 + the Basenji/Enformer train/valid/test intervals (~3.1 GB on disk)."""
        from ..data.download import DownloadError
        from .cli_support import cli_errors

        with cli_errors():  # ValueError / OSError: one line, exit status 1
            if out.exists() and not out.is_dir():
                raise ValueError(f"--out {out}: exists and is not a folder")
            try:
                paths = fetch_hg38(out, source, keep_gz, progress=sys.stderr.isatty(),
                                   echo=lambda s: typer.echo(s, err=True))
            except DownloadError as e:  # a RuntimeError: network or checksum trouble
                raise ValueError(str(e)) from None
        typer.echo(f"genome: {paths['fasta']}\nBED:    {paths['bed']}")
        overrides = "" if source == "basenji" and out == Path("data/hg38") else \
            f" data.fasta={paths['fasta']} data.bed={paths['bed']}"
        typer.echo(f"train:  seqmamba pretrain recipes/hg38.yaml{overrides}")

    @data_app.command("bed")
    def bed_cmd(
        fasta: Path = typer.Argument(..., help="Genome FASTA (plain, gzip or bgzip)."),
        out: Path = typer.Option(..., "--out", help="BED file to write."),
        interval: int = typer.Option(131072, help="Longest interval (Enformer uses 131072)."),
        valid_frac: float = typer.Option(0.05, "--valid-frac", help="Share of each record for valid."),
        test_frac: float = typer.Option(0.05, "--test-frac", help="Share of each record for test."),
    ):
        """Write a train/valid/test BED for any genome (held-out blocks at each record's end)."""
        from ..data.genome import split_intervals
        from ..data.fasta import IndexedFasta
        from .cli_support import atomic_output, cli_errors

        with cli_errors():
            fa = IndexedFasta(fasta)
            rows = split_intervals(list(fa.lengths.items()), interval, valid_frac, test_frac)
            with atomic_output(out) as tmp, open(tmp, "w") as fh:
                fh.writelines("\t".join(map(str, row)) + "\n" for row in rows)
        counts = {s: sum(r[2] - r[1] for r in rows if r[3] == s) for s in ("train", "valid", "test")}
        typer.echo(f"wrote {len(rows)} intervals to {out}: " +
                   ", ".join(f"{k} {v:,} bases" for k, v in counts.items()))
