"""Wall time and peak GPU memory of each pruning method on a model with Llama-2-7B's configuration
(random weights, bf16), 128 x 2048 calibration tokens, one GPU: from the model in memory to the
pruned model in memory. GBLM's time includes its per-sequence gradient pass.

    python benchmarks/pruning/speed_7b.py --out results.json [--methods wanda,gblm,llmc-wanda,llmc-sparsegpt]

``llmc-wanda`` and ``llmc-sparsegpt`` are llm-compressor's WandaPruningModifier and SparseGPTModifier
(``oneshot``, sequential pipeline, every decoder Linear, lm_head left dense, as ours) on the same model
and the same calibration windows.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import record  # noqa: E402
from taylorlab.pruning import Calibration, per_sequence_gradient_stats, prune_model, sparsity_report  # noqa: E402


def build(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cuda").to(torch.bfloat16)
    # buffers made on the meta device hold garbage after to_empty: rebuild the rotary embedding
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg, device="cuda")
    return model


def reinit(model, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)


def llmc_prune(model, method: str, windows: torch.Tensor, sparsity: float = 0.5) -> None:
    """llm-compressor's oneshot on the model in memory. It reads the model's config from disk and wants
    a processor: a config is saved to a temporary folder and a two-token tokenizer stands in (the
    calibration windows are token ids already, so it only pads, and nothing needs padding)."""
    import tempfile

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]")),
                                  pad_token="[PAD]", unk_token="[UNK]")
    cdir = tempfile.mkdtemp()
    model.config.save_pretrained(cdir)
    model.config.name_or_path = cdir
    n, seqlen = windows.shape
    ds = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": [[1] * seqlen] * n})
    cls = {"llmc-wanda": WandaPruningModifier, "llmc-sparsegpt": SparseGPTModifier}[method]
    mod = cls(sparsity=sparsity, mask_structure="0:0", targets=["Linear"], ignore=["re:.*lm_head"])
    oneshot(model=model, dataset=ds, recipe=[mod], num_calibration_samples=n, max_seq_length=seqlen,
            pipeline="sequential", processor=tok)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="magnitude,wanda,gblm,sparsegpt")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--grad-batch", type=int, default=4)
    ap.add_argument("--offload-methods", default="", help="methods to run again with the model on the CPU, one block on the GPU")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    windows = torch.randint(0, 32000, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    model = build(args.layers)
    results = {"config": vars(args), "shape": "Llama-2-7B" if args.layers == 32 else f"Llama-2-7B width, {args.layers} layers",
               "runs": []}
    runs = [(m, False) for m in args.methods.split(",") if m] + [(m, True) for m in args.offload_methods.split(",") if m]
    for method, offload in runs:
        model.to("cuda")
        reinit(model)  # fresh random weights for every run (never uninitialised memory)
        if offload:
            model.to("cpu")
            torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
        t0 = time.time()
        grads, tg = None, 0.0
        if method == "gblm":
            grads = per_sequence_gradient_stats(model, windows, batch_size=args.grad_batch, norm="l2",
                                                device=torch.device("cuda"))
            torch.cuda.synchronize()
            tg = time.time() - t0
        if method.startswith("llmc-"):
            llmc_prune(model, method, windows)
        else:
            prune_model(model, method, sparsity=0.5, batch_size=8, device=torch.device("cuda"), offload=offload,
                        calibration=Calibration(windows, grads, gradient_samples=args.nsamples))
        torch.cuda.synchronize()
        wall = time.time() - t0
        del grads
        row = {"method": method, "offload": offload, "wall_s": round(wall, 2), "gradient_pass_s": round(tg, 2),
               "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
               "model_resident_gib_before": round(base_mem / 2**30, 2),
               "sparsity": round(sparsity_report(model)["total"]["sparsity"], 4)}
        results["runs"].append(row)
        print(row, flush=True)
        record(Path(args.out), results)
    print("\nmethod      offload  wall_s  peak_GiB")
    for r in results["runs"]:
        print(f"{r['method']:10s}  {str(r['offload']):7s} {r['wall_s']:7.1f}  {r['peak_gpu_gib']:7.1f}")


if __name__ == "__main__":
    main()
