"""model: the base model as a save_pretrained artifact — a small Llama built from its config, any
Hugging Face causal LM (hub id or local folder, offline by default), or a GGUF file converted once."""

from __future__ import annotations

from taylorlab.models import build_llama, load_gguf_model, load_pretrained, torch_dtype
from taylorlab.models.builders import find_gguf
from taylorlab.stages.common import count_parameters, save_model


def run(ctx):
    c = ctx.cfg
    if c.source == "scratch":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ctx.artifact("data", "tokenizer")))
        model = build_llama(
            len(tok), hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
            rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings, seed=c.init_seed,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    elif c.source == "pretrained":
        model, tok = load_pretrained(c.name_or_path, local_files_only=c.local_files_only, dtype=c.dtype,
                                     trust_remote_code=c.trust_remote_code)
    else:
        model, tok = load_gguf_model(find_gguf(c.gguf_package, c.gguf_file), dtype=c.dtype)
    model = model.to(torch_dtype(c.dtype))
    n = count_parameters(model)
    ctx.tracker.summary({"model/parameters": n})
    ctx.log.info("model %s (%s): %.2fM parameters", c.name, type(model).__name__, n / 1e6)
    save_model(model, tok, ctx.dir / "model")
    return {"model": "model"}
