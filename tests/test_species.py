"""Species data (seqmamba.data.species), the fine-tuning recipes, and one tiny fine-tuning run."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from seqmamba.config import ConfigError
from seqmamba.data.species import (SpeciesEntry, SpeciesGenome, SpeciesSource, SpeciesWindowDataset,
                                   SplitConfig, chromosome_key, missing_species_message, split_records)
from seqmamba.tokenizers import get_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "species"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMAMBA_CACHE", str(tmp_path / "cache"))


def random_dna(rng, n, p=(0.25, 0.25, 0.25, 0.25)):
    return "".join(rng.choice(list("ACGT"), size=n, p=p))


@pytest.mark.parametrize("name,key", [
    ("chr1", "1"), ("1", "1"), ("hg38_chr13:75549820-75605809", "13"), ("chrX", "x"),
    ("CHROMOSOME_I", "i"), ("chr2A", "2a"), ("NC_000932.1", "nc_000932.1"),
    ("chr1 some description", "1"),
])
def test_chromosome_key(name, key):
    assert chromosome_key(name) == key


def test_chromosome_split_holds_out_hyenadna_chromosomes_and_drops_contigs():
    names = [f"chr{i}" for i in range(1, 23)] + ["chrX", "chrY", "chrM", "chrUn_KI270302v1",
                                                  "chr1_KI270706v1_random", "chr6_GL000250v2_alt"]
    method, splits = split_records({n: 1000 for n in names}, SplitConfig())
    assert method == "chromosome"
    as_set = {k: {iv.name for iv in v} for k, v in splits.items()}
    assert as_set["val"] == {"chr1", "chr3", "chr12", "chr13"}
    assert as_set["test"] == {"chr5", "chr7", "chr9", "chr10", "chr11"}
    assert "chr2" in as_set["train"] and "chrX" in as_set["train"]
    assert not any(n.startswith("chrUn") or n.endswith(("_random", "_alt")) or n == "chrM"
                   for v in as_set.values() for n in v)
    assert all(iv.start == 0 and iv.end == 1000 for v in splits.values() for iv in v)


def test_too_few_chromosomes_fall_back_to_position_ranges():
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.2)
    method, splits = split_records({"NC_008253.1": 1000, "plasmid": 101}, cfg)
    assert method == "position"
    for name, length in [("NC_008253.1", 1000), ("plasmid", 101)]:
        parts = [next(iv for iv in splits[s] if iv.name == name) for s in ("train", "val", "test")]
        assert parts[0].start == 0 and parts[-1].end == length
        assert parts[0].end == parts[1].start and parts[1].end == parts[2].start  # contiguous, disjoint
    big = {s: next(iv for iv in splits[s] if iv.name == "NC_008253.1") for s in splits}
    assert (len(big["train"]), len(big["val"]), len(big["test"])) == (700, 100, 200)
    with pytest.raises(ValueError, match="leaves val/test empty"):
        split_records({"chr2": 1000}, SplitConfig(by="chromosome"))


def test_split_config_checks():
    with pytest.raises(ConfigError, match="in both val and test"):
        SplitConfig(val_chromosomes=["chr1"], test_chromosomes=["1"])
    with pytest.raises(ConfigError, match="val_fraction"):
        SplitConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="must be < 1"):
        SplitConfig(val_fraction=0.5, test_fraction=0.5)


@pytest.fixture
def genomes(tmp_path):
    """Two synthetic species: GC-rich (several chromosomes) and AT-rich with an N-rich region."""
    rng = np.random.default_rng(0)
    gc = "".join(f">chr{i}\n{random_dna(rng, 3000, (0.1, 0.4, 0.4, 0.1))}\n" for i in range(1, 14))
    (tmp_path / "gc.fa").write_text(gc)
    at_seq = random_dna(rng, 2000, (0.4, 0.1, 0.1, 0.4)) + "N" * 2000 + random_dna(rng, 6000, (0.4, 0.1, 0.1, 0.4))
    (tmp_path / "at.fa.gz").write_bytes(gzip.compress(f">contig1\n{at_seq}\n".encode()))
    split = SplitConfig()
    return [SpeciesGenome(SpeciesEntry(name="gc", path=tmp_path / "gc.fa"), split, 0),
            SpeciesGenome(SpeciesEntry(name="at", path=tmp_path / "at.fa.gz"), split, 1)]


def test_species_genomes_choose_their_split(genomes):
    gc, at = genomes
    assert gc.split_method == "chromosome" and at.split_method == "position"
    assert {iv.name for iv in gc.intervals["test"]} == {"chr5", "chr7", "chr9", "chr10", "chr11"}


def test_training_source_samples_train_windows_and_skips_n(genomes):
    tok = get_tokenizer("dna_char")
    src = SpeciesSource(genomes, tok, max_n_fraction=0.1, samples_per_epoch=100)
    assert src.size(500) == 100
    labels = []
    for i in range(200):
        rng = np.random.default_rng([7, i])
        seq_lab = src.get(500, i, rng)
        assert seq_lab["input_ids"].shape == (500,)
        labels.append(int(seq_lab["labels"]))
        k = labels[-1]
        seq, name, start = src.sampler.draw(k, 500, np.random.default_rng([7, i, 1]))
        assert seq.count("N") <= 50  # max_n_fraction
        train = [iv for iv in genomes[k].intervals["train"] if iv.name == name]
        assert train and train[0].start <= start and start + 500 <= train[0].end
    assert 60 < sum(labels) < 140  # species drawn uniformly
    # The same generator state gives the same sample (resumable runs).
    a = src.get(500, 3, np.random.default_rng([1, 2]))
    b = src.get(500, 3, np.random.default_rng([1, 2]))
    assert a["input_ids"].equal(b["input_ids"]) and a["labels"] == b["labels"]
    with pytest.raises(ConfigError, match="no train sequence of at least 9000 bases"):
        src.size(9000)


def test_eval_windows_are_fixed_and_balanced(genomes):
    tok = get_tokenizer("dna_char")
    ds = SpeciesWindowDataset(genomes, "test", 256, 10, tok, seed=3)
    assert [int(ds[i]["labels"]) for i in range(10)] == [0, 1] * 5
    assert ds.sample(4) == ds.sample(4)
    assert ds[4]["input_ids"].equal(ds[4]["input_ids"])
    for i in range(10):
        seq, label, name, start = ds.sample(i)
        test = {iv.name: iv for iv in genomes[label].intervals["test"]}
        assert name in test and test[name].start <= start <= test[name].end - 256


def test_missing_genomes_say_how_to_get_them(tmp_path):
    entry = SpeciesEntry(name="gorilla", path=tmp_path / "g" / "gorGor6.fa.gz", assembly="gorGor6",
                         url="https://hgdownload.soe.ucsc.edu/goldenPath/gorGor6/bigZips/gorGor6.fa.gz")
    msg = missing_species_message([entry])
    assert "gorilla (gorGor6)" in msg and "curl -L -o" in msg and entry.url in msg


def test_bundled_sample_is_real_dna_with_provenance():
    files = sorted(p.name for p in SAMPLE.iterdir() if ".fa" in p.name)
    assert files == ["c_elegans.fa.gz", "chimpanzee.fa", "e_coli.fa.gz", "human.fa", "s_aureus.fa.gz"]
    provenance = (SAMPLE / "PROVENANCE.md").read_text()
    for name in files:
        assert name in provenance
        assert (SAMPLE / name).stat().st_size < 400_000
    human = SpeciesGenome(SpeciesEntry(name="human", path=SAMPLE / "human.fa"),
                          SplitConfig(by="position"), 0)
    assert sum(human.fasta.lengths.values()) == 101_674


# ---- recipes and the fine-tuning task --------------------------------------------------------------

def test_recipes_load_and_name_their_classes():
    from seqmamba.tasks.finetune import load_finetune_recipe

    demo = load_finetune_recipe(REPO / "recipes" / "species-demo.yaml")
    assert demo.model.head == "classification" and demo.model.num_classes == 5
    assert demo.model.class_names == ["human", "chimpanzee", "c_elegans", "e_coli", "s_aureus"]
    assert demo.model.pooling == "mean" and demo.model.vocab_size == 10  # set in the recipe
    apes = load_finetune_recipe(REPO / "recipes" / "great-apes.yaml")
    assert [s.assembly for s in apes.data.species] == ["hg38", "panTro6", "gorGor6", "ponAbe3", "panPan3"]
    assert all(s.url.startswith("https://hgdownload.soe.ucsc.edu/goldenPath/") for s in apes.data.species)
    assert apes.optim.lr == pytest.approx(1e-4)
    assert apes.trainer.max_steps == 10 * 1024
    assert apes.schedule.warmup_steps == 5 * 1024
    assert apes.schedule.min_lr_ratio == pytest.approx(1e-6 / 1e-4)
    assert apes.model.pooling == "last"  # causal backbone: the last token by default
    bi = load_finetune_recipe(REPO / "recipes" / "great-apes.yaml", ["model.bidirectional=true"])
    assert bi.model.pooling == "mean"  # bidirectional: the mean by default
    with pytest.raises(ConfigError, match="num_classes"):
        load_finetune_recipe(REPO / "recipes" / "species-demo.yaml", ["model.num_classes=3"])


def test_great_apes_length_warmup_keeps_the_batch():
    """2^20 windows: one epoch (1024 steps) per doubling from 2^14, batch 64 throughout."""
    from seqmamba.tasks.finetune import load_finetune_recipe
    from seqmamba.training.plan import StagePlan

    lengths = [2 ** k for k in range(14, 21)]
    stages = ", ".join(f"{{seq_len: {L}, steps: 1024, batch_size: 64}}" for L in lengths[:-1])
    recipe = load_finetune_recipe(REPO / "recipes" / "great-apes.yaml", [
        f"schedule.stages=[{stages}, {{seq_len: {lengths[-1]}, batch_size: 64}}]",
        "trainer.micro_batch_tokens=1048576"])
    t = recipe.trainer
    plan = StagePlan(recipe.schedule.stages, t.max_steps, t.tokens_per_step, t.micro_batch_tokens,
                     keep="batch")
    assert [st.seq_len for st in plan.stages] == lengths
    assert [st.steps for st in plan.stages] == [1024] * 6 + [4 * 1024]
    assert {st.batch_size for st in plan.stages} == {64} and plan.accumulate == 64
    assert plan.tokens_through(1024) == 1024 * 64 * 2 ** 14


def test_great_apes_reports_missing_genomes_with_commands(tmp_path, monkeypatch):
    from seqmamba.tasks.finetune import build_finetuning, load_finetune_recipe
    from seqmamba.training.recipe import MissingDataError

    monkeypatch.chdir(tmp_path)  # data/great-apes/... does not exist here
    recipe = load_finetune_recipe(REPO / "recipes" / "great-apes.yaml")
    with pytest.raises(MissingDataError) as err:
        build_finetuning(recipe)
    text = str(err.value)
    for asm in ("hg38", "panTro6", "gorGor6", "ponAbe3", "panPan3"):
        assert f"curl -L -o data/great-apes/{asm}.fa.gz https://hgdownload.soe.ucsc.edu/goldenPath/{asm}/bigZips/{asm}.fa.gz" in text


def test_tiny_finetune_run_end_to_end(tmp_path, monkeypatch):
    """Two optimizer steps of the demo recipe on a tiny model: run folder, export with class
    names, test metrics + confusion matrix, and the export works with classify."""
    from seqmamba import checkpoint
    from seqmamba.tasks.finetune import finetune, load_finetune_recipe

    monkeypatch.chdir(REPO)
    recipe = load_finetune_recipe("recipes/species-demo.yaml", [
        "model.d_model=8", "model.n_layer=1", "trainer.max_steps=2", "trainer.val_every=2",
        "trainer.ckpt_every=2", "trainer.progress_bar=false", f"trainer.runs_dir={tmp_path}",
        "trainer.accelerator=cpu", "data.val_samples=5", "data.test_samples=10",
        "schedule.warmup_steps=1", "schedule.stages=[{seq_len: 64, batch_size: 4}]"])
    result, metrics = finetune(recipe, echo=lambda s: None)
    assert result.steps == 2
    model = checkpoint.load(result.export)
    assert model.config.class_names == ["human", "chimpanzee", "c_elegans", "e_coli", "s_aureus"]
    saved = json.loads((result.run_dir / "test_metrics.json").read_text())
    assert saved["plain"]["n"] == 10 and set(saved) >= {"plain", "rc_average", "window"}
    assert 0.0 <= metrics["rc_average"]["accuracy"] <= 1.0
    assert (result.run_dir / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"
