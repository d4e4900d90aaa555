"""Helpers the stages share (reading parents' artifacts, saving models)."""

from __future__ import annotations

from pathlib import Path

import torch

from taylorlab.data import load_text_split, tokenize_texts
from taylorlab.io import atomic_path


def split_tokens(ctx, split: str, tokenizer) -> torch.Tensor:
    texts = load_text_split(ctx.artifact("data", split), cache_dir=ctx.dir.parent / ".hf-datasets")
    return tokenize_texts(tokenizer, texts)


def save_model(model, tokenizer, path: Path) -> None:
    """``save_pretrained`` (safetensors) of model and tokenizer, renamed into place when complete."""
    with atomic_path(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
