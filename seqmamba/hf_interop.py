"""Hugging Face transformers interop: read and write ``MambaForCausalLM`` directories.

Our parameter layout is mamba_ssm's, which transformers also uses, so the mapping is small:
    transformers                              seqmamba
    backbone.embeddings.weight                backbone.embedding.weight
    backbone.layers.{i}.norm.weight           same
    backbone.layers.{i}.mixer.<param>         same (in_proj, conv1d (d_inner, 1, k), x_proj,
                                              dt_proj, out_proj, A_log, D)
    backbone.norm_f.weight, lm_head.weight    same
Config fields are renamed (hidden_size -> d_model, ...). transformers' vocab_size is the number of
embedding rows, so an HF model loads with pad_vocab_size_multiple = 1, and ``save_hf`` writes only
the first vocab_size rows (the padding rows never produce visible logits).

Only safetensors weights are read (a single file or an index of shards): loading a pickled
pytorch_model.bin could run code, so it is refused with a hint to convert it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch

from seqmamba.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, build_checked,
                                 canonical_state, finish_model, load_tensors_into,
                                 read_json, read_safetensors, save_safetensors,
                                 write_files_atomically)
from seqmamba.config import ConfigError, ModelConfig

__all__ = ["load_hf", "save_hf", "config_from_hf", "config_to_hf"]

INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_KEY = "seqmamba_tokenizer"  # our tokenizer config, kept as an extra HF config key

# transformers MambaConfig field -> (ModelConfig field, transformers' default)
_FIELDS = {
    "hidden_size": ("d_model", 768),
    "num_hidden_layers": ("n_layer", 32),
    "vocab_size": ("vocab_size", 50280),
    "state_size": ("d_state", 16),
    "conv_kernel": ("d_conv", 4),
    "expand": ("expand", 2),
    "time_step_rank": ("dt_rank", "auto"),
    "time_step_min": ("dt_min", 0.001),
    "time_step_max": ("dt_max", 0.1),
    "time_step_floor": ("dt_init_floor", 1e-4),
    "time_step_scale": ("dt_scale", 1.0),
    "use_conv_bias": ("conv_bias", True),
    "use_bias": ("bias", False),
    "layer_norm_epsilon": ("norm_eps", 1e-5),
    "residual_in_fp32": ("residual_in_fp32", True),
    "tie_word_embeddings": ("tie_embeddings", True),
}


def config_from_hf(doc: dict, source: Union[str, Path] = "config.json") -> ModelConfig:
    """ModelConfig for a transformers MambaConfig dict (missing fields take transformers' defaults)."""
    act = doc.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (Mamba uses silu)")
    kwargs = {ours: doc.get(theirs, default) for theirs, (ours, default) in _FIELDS.items()}
    inter = doc.get("intermediate_size")
    if inter is not None and inter != kwargs["expand"] * kwargs["d_model"]:
        raise CheckpointError(f"{source}: intermediate_size {inter} != expand * hidden_size "
                              f"({kwargs['expand']} * {kwargs['d_model']}) is not supported")
    kwargs["pad_vocab_size_multiple"] = 1
    kwargs["tokenizer"] = doc.get(TOKENIZER_KEY)
    try:
        return ModelConfig.from_dict(kwargs)
    except ConfigError as err:
        raise CheckpointError(f"{source}: transformers Mamba config not usable: {err}") from None


def config_to_hf(config: ModelConfig) -> dict:
    doc = {"architectures": ["MambaForCausalLM"], "model_type": "mamba"}
    for theirs, (ours, _) in _FIELDS.items():
        doc[theirs] = getattr(config, ours)
    doc["time_step_rank"] = config.dt_rank_value
    doc["intermediate_size"] = config.d_inner
    doc["hidden_act"] = "silu"
    doc["use_cache"] = True
    if config.tokenizer is not None:
        doc[TOKENIZER_KEY] = config.tokenizer
    return doc


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    single, index = path / WEIGHTS_NAME, path / INDEX_NAME
    if single.is_file():
        return read_safetensors(single)[0]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map' of tensor name -> shard file")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path / shard
            if Path(shard).name != shard:  # a shard outside the directory is not a shard
                raise CheckpointError(f"{index}: shard name {shard!r} is not a plain file name")
            tensors.update(read_safetensors(shard_path)[0])
        return tensors
    if (path / "pytorch_model.bin").exists():
        raise CheckpointError(
            f"{path}: holds only pickled weights (pytorch_model.bin). seqmamba reads safetensors only, "
            "because loading a pickle can run code; convert it with transformers: "
            "MambaForCausalLM.from_pretrained(dir).save_pretrained(new_dir)")
    raise CheckpointError(f"{path}: no {WEIGHTS_NAME} (or {INDEX_NAME}) found")


def _hf_key_to_ours(key: str) -> str:
    for old in ("backbone.embeddings.", "backbone.embedding."):
        if key.startswith(old):
            return "backbone.embedding." + key[len(old):]
    return key


def load_hf(path: Union[str, Path], doc: dict = None, device=None, dtype=None):
    """A MambaLM from a transformers MambaForCausalLM (or MambaModel) directory."""
    path = Path(path)
    config_path = path / CONFIG_NAME
    if doc is None:
        doc = read_json(config_path)
    config = config_from_hf(doc, config_path)
    raw = _read_hf_weights(path)
    if raw and not any(k.startswith("backbone.") for k in raw):  # saved from a bare MambaModel
        raw = {("backbone." + k if not k.startswith("lm_head.") else k): v for k, v in raw.items()}
    tensors = {_hf_key_to_ours(k): v for k, v in raw.items()}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # transformers ties it to the embedding on load too
    model = build_checked(config, config_path)
    load_tensors_into(model, tensors, path)
    return finish_model(model, device, dtype)


def save_hf(model, path: Union[str, Path]) -> None:
    """Write ``model`` (a causal MambaLM) as a transformers MambaForCausalLM directory
    (config.json + model.safetensors), loadable with ``MambaForCausalLM.from_pretrained``."""
    from seqmamba.heads import MambaLM

    config = model.config
    if not isinstance(model, MambaLM) or config.backbone != "mamba" or config.bidirectional:
        raise ValueError("save_hf supports causal MambaLM models with the 'mamba' backbone only "
                         "(transformers has no bidirectional, classification or U-Net Mamba)")
    if getattr(model, "tokenizer", None) is not None:
        config = config.replace(tokenizer=model.tokenizer.to_config())
    doc = config_to_hf(config)
    dtypes = {t.dtype for t in model.parameters()}
    doc["dtype"] = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else "float32"

    tensors, _ = canonical_state(model)
    out = {}
    for key, t in tensors.items():
        if key in ("backbone.embedding.weight", "lm_head.weight"):
            t = t[: config.vocab_size]  # drop our alignment padding rows
        if key.startswith("backbone.embedding."):
            key = "backbone.embeddings." + key[len("backbone.embedding."):]
        out[key] = t
    write_files_atomically(path, {
        WEIGHTS_NAME: lambda p: save_safetensors(out, p, {"format": "pt"}),
        CONFIG_NAME: lambda p: p.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8"),
    })
