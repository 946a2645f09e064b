"""ModelConfig validation and the generic typed dict -> dataclass loader."""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from seqmamba.config import ConfigError, ModelConfig, TypedConfig, from_dict, key_path

BASE = {"d_model": 64, "n_layer": 2, "vocab_size": 13}


def cfg(**changes):
    return ModelConfig.from_dict({**BASE, **changes})


def error_of(**changes) -> str:
    with pytest.raises(ConfigError) as info:
        cfg(**changes)
    return str(info.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({"d_modle": 64, "n_layer": 2, "vocab_size": 13})
    assert str(info.value) == "model.d_modle: unknown key (did you mean d_model?)"


def test_unknown_key_without_a_close_match_lists_known_keys():
    msg = error_of(zzzz=1)
    assert msg.startswith("model.zzzz: unknown key (known keys: ")
    assert "d_state" in msg


def test_wrong_types_name_key_and_value():
    assert error_of(d_model="abc") == "model.d_model: expected int, got str 'abc'"
    assert error_of(n_layer=2.5) == "model.n_layer: expected int, got float 2.5"
    assert error_of(d_model=True) == "model.d_model: expected int, got bool True"
    assert error_of(tie_embeddings="yes") == \
        "model.tie_embeddings: expected bool (true/false), got str 'yes'"
    assert error_of(head="regression").startswith("model.head: expected one of 'lm', 'classification'")
    assert error_of(dt_rank="big") == "model.dt_rank: expected int or 'auto', got str 'big'"
    assert error_of(tokenizer=["dna_char"]).startswith("model.tokenizer: expected dict or null")


def test_int_is_accepted_for_float_fields():
    c = cfg(dt_max=1, norm_eps=1)
    assert isinstance(c.dt_max, float) and c.dt_max == 1.0


@pytest.mark.parametrize("changes, key", [
    ({"d_conv": 5}, "d_conv"), ({"d_conv": 1}, "d_conv"), ({"d_model": 0}, "d_model"),
    ({"n_layer": 0}, "n_layer"), ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
    ({"dt_rank": 0}, "dt_rank"), ({"pad_vocab_size_multiple": 0}, "pad_vocab_size_multiple"),
    ({"head": "classification"}, "num_classes"),
    ({"head": "classification", "num_classes": 1}, "num_classes"),
    ({"num_classes": 3}, "num_classes"), ({"bidirectional_tie": True}, "bidirectional_tie"),
    ({"tokenizer": {"k": 3}}, "tokenizer.name"), ({"norm_eps": -1.0}, "norm_eps"),
])
def test_bad_values(changes, key):
    assert error_of(**changes).startswith(f"model.{key}: ")


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"^model\.vocab_size: required key is missing$"):
        ModelConfig.from_dict({"d_model": 8, "n_layer": 1})


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="^model: expected a mapping, got list"):
        ModelConfig.from_dict([1, 2])


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="^model.d_model: expected int"):
        ModelConfig(d_model="8", n_layer=1, vocab_size=4)
    with pytest.raises(ConfigError, match="^model.d_conv: must be 2, 3 or 4"):
        ModelConfig(d_model=8, n_layer=1, vocab_size=4).replace(d_conv=7)


def test_derived_sizes():
    c = cfg(d_model=100, vocab_size=13)
    assert c.dt_rank_value == math.ceil(100 / 16) == 7
    assert c.d_inner == 200
    assert c.padded_vocab_size == 16
    assert cfg(vocab_size=16).padded_vocab_size == 16
    assert cfg(pad_vocab_size_multiple=1).padded_vocab_size == 13
    assert cfg(dt_rank=3).dt_rank_value == 3


def test_round_trip_through_json():
    c = cfg(head="classification", num_classes=4, pooling="mean", bidirectional=True,
            tokenizer={"name": "dna_char", "add_special_tokens": False})
    again = ModelConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c


# ---- the generic loader, as a recipe would use it ----------------------------------------------

@dataclass
class Optim(TypedConfig):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"

    def validate(self, prefix):
        if self.lr <= 0:
            raise ConfigError(f"{key_path(prefix, 'lr')}: must be > 0, got {self.lr}")


@dataclass
class Data:
    files: list[Path]
    weights: dict[str, float] = field(default_factory=dict)
    max_len: Optional[int] = None


@dataclass
class Recipe:
    data: Data
    optim: Optim = field(default_factory=Optim)
    seed: int = 0


def test_generic_loader_converts_and_nests():
    r = from_dict(Recipe, {"data": {"files": ["a.fa", "b.fa"], "weights": {"a": 1}},
                           "optim": {"lr": 1, "betas": [0.8, 0.9]}})
    assert r.data.files == [Path("a.fa"), Path("b.fa")]
    assert r.data.weights == {"a": 1.0} and r.data.max_len is None
    assert r.optim == Optim(lr=1.0, betas=(0.8, 0.9)) and isinstance(r.optim.betas, tuple)


@pytest.mark.parametrize("data, message", [
    ({"data": {"files": ["a", 3]}}, "recipe.data.files[1]: expected a path string, got int 3"),
    ({"data": {"files": []}, "optim": {"lrr": 1}}, "recipe.optim.lrr: unknown key (did you mean lr?)"),
    ({"data": {"files": []}, "optim": {"lr": -1}}, "recipe.optim.lr: must be > 0, got -1.0"),
    ({"data": {"files": []}, "optim": {"betas": [0.9]}},
     "recipe.optim.betas: expected a list of 2 items, got 1"),
    ({"data": {"files": [], "weights": {"a": "x"}}}, "recipe.data.weights.a: expected float, got str 'x'"),
    ({"data": {"files": []}, "optim": "adam"}, "recipe.optim: expected a mapping, got str 'adam'"),
    ({}, "recipe.data: required key is missing"),
])
def test_generic_loader_errors(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Recipe, data, "recipe")
    assert str(info.value) == message


def test_typed_config_direct_construction_uses_its_prefix():
    with pytest.raises(ConfigError, match=r"^lr: must be > 0"):  # no _config_prefix set
        Optim(lr=-2.0)
    with pytest.raises(ConfigError, match=r"^schedule: expected one of 'cosine', 'constant'"):
        Optim(schedule="linear")
    assert Optim().to_dict() == {"lr": 1e-3, "betas": [0.9, 0.95], "schedule": "cosine"}
