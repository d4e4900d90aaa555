"""Tokenizers and fixed-length token windows."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

import torch

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """A byte-level BPE tokenizer trained on ``texts``, saved in the Hugging Face format."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=list(SPECIAL.values()), show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **SPECIAL)
    tok.save_pretrained(str(out_dir))
    return tok


def tokenize_texts(tokenizer, texts: List[str], add_eos: bool = True) -> torch.Tensor:
    """All texts as one 1-D stream of token ids, documents separated by EOS."""
    eos = tokenizer.eos_token_id
    ids: List[int] = []
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for seq in enc:
        ids.extend(seq)
        if add_eos and eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def make_windows(tokens: torch.Tensor, seq_len: int, max_windows: Optional[int] = None) -> torch.Tensor:
    """Non-overlapping windows [n, seq_len] (the tail shorter than seq_len is dropped)."""
    n = tokens.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"only {tokens.numel()} tokens: not one window of {seq_len}")
    return tokens[: n * seq_len].view(n, seq_len)


def sample_windows(tokens: torch.Tensor, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seq_len`` at seeded random offsets (the papers' calibration sampling)."""
    if tokens.numel() <= seq_len:
        raise ValueError(f"only {tokens.numel()} tokens: not one window of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len, (n,), generator=g)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])
