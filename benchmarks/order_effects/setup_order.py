"""What the order-effect benchmarks share: the import paths, the result writer (``record_json``),
dtypes, Adam's settings, the warmup + cosine schedule, the arguments every script takes and a Llama
built from a conf/model/*.yaml (imported first by the scripts beside it; torch, transformers, pyyaml)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]  # the package and benchmarks/common.py

from common import record as record_json  # noqa: E402,F401 (what every script writes its result with)
from taylorlab.models import build_llama  # noqa: E402
from taylorlab.order import AdamHP  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
HP = AdamHP(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, grad_clip=1.0)


def schedule(lr: float, warmup: float, T: int) -> Tuple[List[float], int]:
    """Per-step learning rates: linear warmup over ``warmup`` x T steps, then cosine to 10% (constant
    when there is no warmup), as the training stage schedules them; and the warmup steps."""
    from taylorlab.training import TrainSettings
    from taylorlab.training.trainer import lr_lambda

    w = int(round(warmup * T))
    sched = lr_lambda(TrainSettings(lr=lr, warmup_steps=w, schedule="cosine" if w else "constant", min_lr_ratio=0.1), T)
    return [lr * sched(t) for t in range(T)], w


def conf_llama(name: str, vocab: int, seq_len: int, device, dtype=torch.float32):
    """A seeded from-scratch Llama with the shape of conf/model/<name>.yaml."""
    import yaml

    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    return build_llama(vocab, hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                       num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                       num_key_value_heads=cfg["num_key_value_heads"], max_position_embeddings=seq_len,
                       seed=0).to(device=device, dtype=dtype)


def parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every order benchmark takes: the token file, the result JSON and the batch shape."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", required=True, help="the token streams from make_tokens.py")
    ap.add_argument("--out", required=True, help="the result JSON (command, commit, machine, versions)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per batch")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    return ap
