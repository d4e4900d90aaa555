"""Token streams for the order-effects benchmark, made where the engine's dependencies are (the GPU
machine has none of datasets / mwparserfromhell): the mixed-domain training split (Wikipedia leads
and Shakespeare, interleaved in blocks) and the validation split, BPE-tokenised.

    python benchmarks/order_effects/make_tokens.py --out .bench/order_tokens.pt
    python benchmarks/order_effects/make_tokens.py --out .bench/smollm2_tokens.pt --gguf <SmolLM2 .gguf>
        (SmolLM2's own tokenizer, for continued training of the embedded model: smollm2_scale.py)
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from taylorlab.data import build_default_splits, tokenize_texts, train_bpe_tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--max-train-tokens", type=int, default=600_000)
    ap.add_argument("--gguf", help="tokenise with this GGUF model's own tokenizer instead of a trained BPE")
    a = ap.parse_args()
    s = build_default_splits(domains=("wiki", "shakespeare"), block_chars=2000)
    train, val = [r["text"] for r in s["train"]], [r["text"] for r in s["validation"]]
    with tempfile.TemporaryDirectory() as d:
        if a.gguf:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(Path(a.gguf).parent), gguf_file=Path(a.gguf).name)
        else:
            tok = train_bpe_tokenizer(train, a.vocab, Path(d) / "tok")
        out = {"train": tokenize_texts(tok, train)[: a.max_train_tokens].to(torch.int32), "validation": tokenize_texts(tok, val).to(torch.int32),
               "vocab": len(tok)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, a.out)
    print({k: (v.numel() if hasattr(v, "numel") else v) for k, v in out.items()})


if __name__ == "__main__":
    main()
