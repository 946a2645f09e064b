#!/usr/bin/env python
"""Rebuild the bundled human DNA sample (datasets/human/) from its PyPI source packages.

The sample is the human sequence shipped in two PyPI source distributions (see
datasets/human/PROVENANCE.md):

    biopython 1.88 sdist  Tests/Blat/hg38.fa                  GRCh38 chr13 and chr4 regions
    pyfaidx 0.9.2.2 sdist tests/data/chr17.hg19.part.fa       an hg19 chr17 region

usage:
    python datasets/prepare_human_sample.py                      # pip download the two sdists
    python datasets/prepare_human_sample.py --from-fasta FILE    # records already extracted
    python datasets/prepare_human_sample.py --check              # rebuild in a temp dir, compare

Writes human_sample.fa (records named <assembly>_<source header>, 60 bases a line) and
human_sample.bed: each record's first 80 % is train, the next 10 % valid, the last 10 % test
(records under 20 kb are train only), cut into intervals of at most 8192 bases like the
Basenji/Enformer BED that the hg38 recipe uses.
"""
from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
OUT = HERE / "human"
SDISTS = [("biopython", "1.88", "Tests/Blat/hg38.fa", "hg38"),
          ("pyfaidx", "0.9.2.2", "tests/data/chr17.hg19.part.fa", "hg19")]
INTERVAL = 8192
MIN_SPLIT_RECORD = 20_000


def read_fasta(text: str) -> list[tuple[str, str]]:
    records, name, seq = [], None, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(seq)))
            name, seq = line[1:].split()[0], []
        elif line:
            seq.append(line)
    if name is not None:
        records.append((name, "".join(seq)))
    return records


def from_pypi(cache: Path) -> list[tuple[str, str]]:
    records = []
    for package, version, member, assembly in SDISTS:
        archive = cache / f"{package}-{version}.tar.gz"
        if not archive.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--no-binary", ":all:", f"{package}=={version}", "-d", str(cache)],
                           check=True)
        with tarfile.open(archive) as tar:
            text = tar.extractfile(f"{package}-{version}/{member}").read().decode("ascii")
        records += [(f"{assembly}_{name}", seq) for name, seq in read_fasta(text)]
    return records


def split_bed(records: list[tuple[str, str]]) -> list[tuple[str, int, int, str]]:
    from seqmamba.data.genome import split_intervals

    return split_intervals([(name, len(seq)) for name, seq in records], INTERVAL, 0.1, 0.1,
                           MIN_SPLIT_RECORD)


def write(records, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "human_sample.fa", "w") as fh:
        for name, seq in records:
            fh.write(f">{name}\n")
            for i in range(0, len(seq), 60):
                fh.write(seq[i:i + 60] + "\n")
    with open(out / "human_sample.bed", "w") as fh:
        for row in split_bed(records):
            fh.write("\t".join(map(str, row)) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--from-fasta", type=Path, help="take the records from this FASTA instead")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "seqmamba-sdists")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare")
    args = ap.parse_args()
    if args.from_fasta:
        records = read_fasta(args.from_fasta.read_text())
    else:
        args.cache.mkdir(parents=True, exist_ok=True)
        records = from_pypi(args.cache)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            write(records, Path(tmp))
            same = all(filecmp.cmp(Path(tmp) / f, args.out / f, shallow=False)
                       for f in ("human_sample.fa", "human_sample.bed"))
        print("identical" if same else "DIFFERENT")
        return 0 if same else 1
    write(records, args.out)
    print(f"wrote {args.out}/human_sample.fa ({sum(len(s) for _, s in records):,} bases, "
          f"{len(records)} records) and human_sample.bed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
