"""data: the embedded corpus as JSON-lines splits (read back with ``datasets``) and a BPE tokenizer."""

from __future__ import annotations

from taylorlab.data import build_default_splits, load_text_split, train_bpe_tokenizer, userfiles, write_jsonl_split
from taylorlab.io import atomic_path

SPLITS = ("train", "validation", "calibration", "test")


def run(ctx):
    c = ctx.cfg
    if c.files:  # your own text: checked before the run (config check), split by userfiles' rule
        docs = userfiles.load_documents(list(c.files), cache_dir=ctx.dir.parent / ".hf-datasets")
        splits = userfiles.split_documents(docs, c.seed, c.holdout)
        ctx.log.info("%d documents from %d file(s)", len(docs), len(c.files))
    else:
        splits = build_default_splits(
            seed=c.seed, max_train_docs=c.max_train_docs, validation_docs=c.validation_docs,
            calibration_docs=c.calibration_docs, max_test_articles=c.max_test_articles, min_doc_chars=c.min_doc_chars,
            domains=tuple(c.domains), block_chars=c.block_chars,
        )
    for name in SPLITS:
        write_jsonl_split(splits[name], ctx.dir / f"{name}.jsonl")
        ctx.tracker.log({f"data/{name}_docs": len(splits[name]),
                         f"data/{name}_chars": sum(len(r["text"]) for r in splits[name])})
    train_texts = load_text_split(ctx.dir / "train.jsonl", cache_dir=ctx.dir.parent / ".hf-datasets")
    with atomic_path(ctx.dir / "tokenizer") as tmp:
        tok = train_bpe_tokenizer(train_texts, c.tokenizer_vocab_size, tmp)
    ctx.log.info("splits %s; tokenizer vocabulary %d", {k: len(v) for k, v in splits.items()}, len(tok))
    return {**{name: f"{name}.jsonl" for name in SPLITS}, "tokenizer": "tokenizer"}
