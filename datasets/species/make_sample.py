"""Rebuild the bundled species sample (this folder) from the registry-sourced DNA files.

    python datasets/species/make_sample.py [SOURCE_DIR]

SOURCE_DIR defaults to ../shared/data/dna/species beside the repository: the folder that
``get_dna.sh`` fills from PyPI/Debian packages (see PROVENANCE.md here for each package and
file). Each species keeps the first ``BASES`` bases of the records listed below, so the demo
recipe trains on a few hundred KB in all. Output is deterministic (gzip with mtime 0), so the
sha256 sums in PROVENANCE.md can be checked by re-running this script.
"""
from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

from seqmamba.data.fasta import read_fasta

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1].parent / "shared" / "data" / "dna" / "species"

# output file -> (source file, records to keep (None = all), bases kept per record (None = all))
SAMPLE = {
    "human.fa": ("homo_sapiens.fa", None, None),
    "chimpanzee.fa": ("pan_troglodytes.fa", None, None),
    "c_elegans.fa.gz": ("caenorhabditis_elegans.fa.gz", ["CHROMOSOME_I"], 150_000),
    "e_coli.fa.gz": ("escherichia_coli.fa.gz", None, 150_000),
    "s_aureus.fa.gz": ("staphylococcus_aureus.fa.gz", ["gi|57650036|ref|NC_002951.2|"], 150_000),
}


def fasta_text(records) -> str:
    lines = []
    for header, seq in records:
        lines.append(">" + header)
        lines.extend(seq[i:i + 60] for i in range(0, len(seq), 60))
    return "\n".join(lines) + "\n"


def main(source: Path) -> None:
    for out_name, (src_name, keep, bases) in SAMPLE.items():
        records = []
        for rec in read_fasta(source / src_name):
            if keep is not None and rec.id not in keep:
                continue
            seq = rec.sequence if bases is None else rec.sequence[:bases]
            rest = rec.description[len(rec.id):].strip() or f"{rec.id} of {src_name}"
            header = rec.description if bases is None or len(rec.sequence) <= bases else \
                f"{rec.id} bases 1-{len(seq)} of {rest}"
            records.append((header, seq))
        data = fasta_text(records).encode("ascii")
        if out_name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        (HERE / out_name).write_bytes(data)
        n = sum(len(s) for _, s in records)
        print(f"{out_name}: {len(records)} record(s), {n} bases, {len(data)} bytes, "
              f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
