from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Tuple

import torch

from taylorlab.errors import ArtifactError, ConfigError, DeviceError

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(_DTYPES)}.") from None


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N, checked against this machine's GPUs."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device={name} was requested but torch.cuda.is_available() is False; use device=cpu or auto.")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise DeviceError(f"device={name}: this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None


def build_llama(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    intermediate_size: int = 352,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 4,
    max_position_embeddings: int = 256,
    rope_theta: float = 10000.0,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
):
    """A freshly initialised LlamaForCausalLM (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta, tie_word_embeddings=tie_word_embeddings, attention_dropout=0.0,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_pretrained(name_or_path: str, *, local_files_only: bool = True, dtype: str = "float32",
                    trust_remote_code: bool = False) -> Tuple[object, object]:
    """Any Hugging Face causal LM (and its tokenizer) by hub id or local folder.

    With ``local_files_only`` (the default) nothing is downloaded: a hub id must already be in the
    local Hugging Face cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    if (name_or_path.startswith(("/", ".", "~")) or os.sep in name_or_path and local.exists()) and not local.exists():
        raise ArtifactError(f"model path {local} does not exist; set model.name_or_path to a folder with config.json.")
    if local.is_dir() and not (local / "config.json").exists():
        raise ArtifactError(f"model folder {local} has no config.json (it is not a save_pretrained folder); point "
                            f"model.name_or_path at the folder that holds config.json and the weights.")
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path,
                                            local_files_only=local_files_only, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.exists() else name_or_path, dtype=torch_dtype(dtype),
            local_files_only=local_files_only, trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        where = "a local folder" if local.exists() else "the local Hugging Face cache"
        raise ArtifactError(
            f"model {name_or_path!r} could not be loaded from {where} ({str(exc).splitlines()[0][:160]}); "
            f"point model.name_or_path at a folder with config.json and weights, or set "
            f"model.local_files_only=false on a machine with hub access."
        ) from exc
    return model, tok


def find_gguf(package: Optional[str], file: str) -> Path:
    path = Path(file).expanduser()
    if path.is_absolute():
        if not path.exists():
            raise ArtifactError(f"GGUF file {path} does not exist; fix model.gguf_file.")
        return path
    if not package:
        raise ConfigError("model.gguf_file is relative, so model.gguf_package must name the package that ships it.")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(f"package {package} (which ships {file}) is not installed; run `make install`.")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.exists():
        raise ArtifactError(f"{file} is not inside the installed package {package}; reinstall it.")
    return path


def load_gguf_model(gguf_path: Path, dtype: str = "float32"):
    """Load a GGUF checkpoint (dequantised by transformers) and copy it into a fresh, plain model of
    the same architecture whose config no longer names the GGUF quantisation: transformers refuses
    to ``save_pretrained`` (and to ``.float()``) a model whose config keeps a ``quantization_config``,
    although its weights are already plain float tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ArtifactError(f"GGUF {gguf_path.name} does not map onto {type(fresh).__name__} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    if getattr(fresh.config, "quantization_config", None) is not None or getattr(fresh, "hf_quantizer", None):
        raise ArtifactError(f"GGUF {gguf_path.name}: the copied model still carries a quantisation config.")
    return fresh.to(torch_dtype(dtype)), tok


def load_model_artifact(path: Path, *, device: str | torch.device = "cpu", dtype: str = "float32"):
    """A model artifact written by ``save_pretrained`` (and its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise ArtifactError(f"model artifact {path} has no config.json; force the stage that wrote it to re-run.")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ArtifactError(f"model artifact {path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); force the stage that wrote it to re-run.") from exc
    return model.to(device), tok


def context_length(model, cap: int) -> int:
    """The usable window: ``cap`` limited by the model's positions (never the uncapped maximum)."""
    n = getattr(model.config, "max_position_embeddings", None) or cap
    return int(min(cap, n))
