"""Wall time and peak GPU memory of each pruning method on a model with Llama-2-7B's configuration
(random weights, bf16), 128 x 2048 calibration tokens, one GPU: from the model in memory to the
pruned model in memory. GBLM's time includes its per-sequence gradient pass.

    python benchmarks/pruning/speed_7b.py --out results.json [--methods wanda,gblm,llmc-wanda,llmc-sparsegpt]

``two-pass`` (a pseudo-method) times what every calibrated method's block walk must at least do: the
capture and two plain passes of every block over the windows (statistics, then the pruned block's
outputs), no hooks; ``one-pass`` the capture and one pass (what ``@seq``, the sequential walk, must
at least do). ``--check`` compares, on block 0's inputs, the fp32 Hessian (inputs cast to fp32,
fp32 GEMM without TF32, as the reference) with the one the library accumulates (bf16 operands, fp32
accumulation on the tensor cores), and the SparseGPT masks both give on q_proj and down_proj.

``llmc-wanda`` and ``llmc-sparsegpt`` are llm-compressor's WandaPruningModifier and SparseGPTModifier
(``oneshot``, sequential pipeline, every decoder Linear, lm_head left dense, as ours) on the same model
and the same calibration windows.

A method may carry options after a colon, separated by ``/`` (``wanda++:ro_iters=5/ro_precision=bfloat16``),
``@seq`` at the end prunes with ``walk="sequential"``, and ``@owl`` spreads the sparsity with OWL (m = 5, lambda = 0.08, the paper's defaults), ours
through ``prune.profile``, llm-compressor's through its ``sparsity_profile="owl"``. ``@liger`` runs the
model's RMSNorm, SwiGLU and rotary embedding through Liger-Kernel's fused kernels (``prune.kernels=liger``
and ``calibrate.kernels=liger``), in the gradient pass and the walk alike.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import record, require_cuda  # noqa: E402
from taylorlab.pruning.kernels import fused_kernels  # noqa: E402
from taylorlab.pruning import (Calibration, Profile, per_sequence_gradient_stats, prune_model, registry,  # noqa: E402
                               sparsity_report)
from taylorlab.pruning.structure import capture_block_calls, find_decoder_layers, find_linears, run_block  # noqa: E402



def parse_option(default, text: str):
    """``text`` as the type of the option's default (``bool("false")`` would be True)."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise SystemExit(f"error: boolean option value {text!r}: use true or false")
        return text.lower() == "true"
    return type(default)(text)

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


def windows_and_model(nsamples: int, seqlen: int, layers: int):
    """The benchmarks' calibration windows (random token ids, seed 0) and the 7B-shape model on the
    GPU, with TF32 off (fp32 products stay fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    windows = torch.randint(0, 32000, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    return windows, build(layers)


def reinit(model, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)


OWL_M, OWL_LAMBDA = 5, 0.08


def llmc_prune(model, method: str, windows: torch.Tensor, sparsity: float = 0.5, owl: bool = False) -> None:
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
    extra = dict(sparsity_profile="owl", owl_m=OWL_M, owl_lmbda=OWL_LAMBDA) if owl else {}
    mod = cls(sparsity=sparsity, mask_structure="0:0", targets=["Linear"], ignore=["re:.*lm_head"], **extra)
    oneshot(model=model, dataset=ds, recipe=[mod], num_calibration_samples=n, max_seq_length=seqlen,
            pipeline="sequential", processor=tok)


@torch.no_grad()
def two_pass(model, windows, batch_size=8, passes=2):
    """The capture and two plain passes of every block (the floor of the block walk), or one
    (``passes=1``: the floor of ``walk="sequential"``)."""
    _, layers = find_decoder_layers(model)
    hidden, calls = capture_block_calls(model, windows, batch_size, torch.device("cuda"))
    for i, block in enumerate(layers):
        for _ in range(passes - 1):
            for x, call in zip(hidden, calls[i]):
                run_block(block, x, call)
        hidden = [run_block(block, x, call) for x, call in zip(hidden, calls[i])]


@torch.no_grad()
def check_hessians(model, windows, batch_size=8):
    """fp32-reference Hessian against the library's on block 0; SparseGPT masks from each."""
    import copy

    from taylorlab.pruning.methods.sparsegpt import sparsegpt_prune_
    from taylorlab.pruning.stats import attach

    _, layers = find_decoder_layers(model)
    hidden, calls = capture_block_calls(model, windows, batch_size, torch.device("cuda"))
    block = layers[0]
    lins = find_linears(block)
    names = ("self_attn.q_proj", "mlp.down_proj")
    stats, handles = attach({n: lins[n] for n in names}, hessian=True)
    ref = {n: torch.zeros(stats[n].hessian.shape, device="cuda") for n in names}
    count = [0]

    def fp32_hook(name):
        def fn(mod, inp, out):
            x = inp[0].reshape(-1, inp[0].shape[-1]).float()
            b = inp[0].shape[0]
            n = count[0]
            ref[name].mul_(n / (n + b)).addmm_(x.t(), x, alpha=2.0 / (n + b))
        return fn

    handles += [lins[n].register_forward_hook(fp32_hook(n)) for n in names]
    for x, call in zip(hidden, calls[0]):
        run_block(block, x, call)
        count[0] += x.shape[0]
    for h in handles:
        h.remove()
    out = {}
    for n in names:
        a, b = ref[n], stats[n].hessian
        la, lb = copy.deepcopy(lins[n]), copy.deepcopy(lins[n])
        sparsegpt_prune_(la, a, 0.5, None)
        sparsegpt_prune_(lb, b, 0.5, None)
        out[n] = {"hessian_rel_diff": float((a - b).norm() / a.norm()),
                  "sparsegpt_mask_agreement": float(((la.weight == 0) == (lb.weight == 0)).float().mean()),
                  "sparsegpt_weight_rel_diff": float((la.weight.float() - lb.weight.float()).norm() / la.weight.float().norm())}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="magnitude,wanda,gblm,sparsegpt")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--grad-batch", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="calibration sequences per block call")
    ap.add_argument("--sdpa", default="default", choices=["default", "flash", "efficient", "cudnn"],
                    help="the only scaled-dot-product attention backend allowed (default: torch's choice)")
    ap.add_argument("--offload-methods", default="", help="methods to run again with the model on the CPU, one block on the GPU")
    ap.add_argument("--check", action="store_true", help="compare the fp32 and the library's Hessians on block 0 first")
    args = ap.parse_args()
    if require_cuda("times pruning on a GPU"):
        return 2
    windows, model = windows_and_model(args.nsamples, args.seqlen, args.layers)
    from taylorlab.pruning.stats import HALF_GEMM_FP32_OUT

    results = {"half_gemm_fp32_out": HALF_GEMM_FP32_OUT, "config": vars(args), "shape": "Llama-2-7B" if args.layers == 32 else f"Llama-2-7B width, {args.layers} layers",
               "runs": []}
    if args.check:
        reinit(model)
        results["hessian_check"] = check_hessians(model, windows)
        print(results["hessian_check"], flush=True)
    if args.sdpa != "default":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION}[args.sdpa]
        sdpa_kernel(backend).__enter__()  # for the whole run
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
        spec, *flags = method.split("@")  # wanda@owl: OWL's profile; wanda@seq: walk="sequential"; @liger: fused kernels
        owl, walk = "owl" in flags, "sequential" if "seq" in flags else "block"
        kernels = "liger" if "liger" in flags else "eager"
        fused_sum = "bmm" not in flags  # @bmm: GBLM's per-sequence sum as a batched GEMM and a reduction
        grads, tg = None, 0.0
        if method.startswith("gblm"):
            grads = per_sequence_gradient_stats(model, windows, batch_size=args.grad_batch, norm="l2",
                                                device=torch.device("cuda"), kernels=kernels,
                                                fused_sum=fused_sum)
            torch.cuda.synchronize()
            tg = time.time() - t0
        if spec.startswith("llmc-"):
            try:
                llmc_prune(model, spec, windows, owl=owl)
            except Exception as exc:  # its failure is a result too: recorded, and the next method runs
                row = {"method": method, "offload": offload, "error": f"{type(exc).__name__}: {exc}"}
                results["runs"].append(row)
                print(row, flush=True)
                record(Path(args.out), results)
                continue
        elif spec in ("two-pass", "one-pass"):
            with fused_kernels(model, kernels, torch.device("cuda")):
                two_pass(model, windows, batch_size=args.batch, passes=2 if spec == "two-pass" else 1)
        else:
            name, _, opts = spec.partition(":")  # e.g. wanda++:ro_iters=5/ro_precision=bfloat16
            options = {k: parse_option(getattr(registry.get(name).make_options(), k), v)
                       for k, v in (kv.split("=") for kv in opts.split("/") if kv)}
            profile = Profile("owl", m=OWL_M, lmbda=OWL_LAMBDA) if owl else None
            prune_model(model, name, sparsity=0.5, batch_size=args.batch, device=torch.device("cuda"), offload=offload,
                        options=options, profile=profile, walk=walk, kernels=kernels,
                        calibration=Calibration(windows, grads, gradient_samples=args.nsamples))
        torch.cuda.synchronize()
        wall = time.time() - t0
        del grads
        row = {"method": method, "offload": offload, "wall_s": round(wall, 2), "gradient_pass_s": round(tg, 2),
               "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
               "model_resident_gib_before": round(base_mem / 2**30, 2),
               "sparsity": round(sparsity_report(model)["total"]["sparsity"], 4) if not method.endswith("-pass") else 0.0}
        if spec.startswith("wanda++") and "ro_iters" in spec:
            row["note"] = "regional optimisation on every block"
        results["runs"].append(row)
        print(row, flush=True)
        record(Path(args.out), results)
    print("\nmethod      offload  wall_s  peak_GiB")
    for r in results["runs"]:
        if "error" in r:
            print(f"{r['method']:10s}  {str(r['offload']):7s} {r['error'][:60]}")
        else:
            print(f"{r['method']:10s}  {str(r['offload']):7s} {r['wall_s']:7.1f}  {r['peak_gpu_gib']:7.1f}")


if __name__ == "__main__":
    sys.exit(main())
