"""Text corpora that ship inside registry packages, splits, tokenizers and token batches.

Needs only the standard library, ``datasets``, ``tokenizers``/``transformers`` and torch.
"""

from taylorlab.data.corpus import (  # noqa: F401
    embedded_file,
    load_wiki_articles,
    load_wiki_leads,
    build_default_splits,
    write_jsonl_split,
    load_text_split,
)
from taylorlab.data.tokens import train_bpe_tokenizer, tokenize_texts, make_windows  # noqa: F401
