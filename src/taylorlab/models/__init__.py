"""Model builders: a LlamaForCausalLM from a small config, any Hugging Face causal LM by hub id or
local path (offline by default), and the embedded SmolLM2-135M-Instruct GGUF converted once."""

from taylorlab.models.builders import (  # noqa: F401
    build_llama,
    load_pretrained,
    load_gguf_model,
    load_model_artifact,
    resolve_device,
    torch_dtype,
    context_length,
)
