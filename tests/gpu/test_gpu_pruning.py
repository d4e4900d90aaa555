"""GPU tests: skipped without CUDA (CI has none); run on the lent H200 (see benchmarks/README)."""

import copy

import pytest
import torch

from helpers import prune_with

from taylorlab.pruning import Calibration, Profile, per_sequence_gradient_stats, prune_model
from taylorlab.pruning.structure import block_linears

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _model():
    from taylorlab.models import build_llama

    return build_llama(257, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=128, seed=0)


def _windows():
    return torch.randint(0, 257, (12, 64), generator=torch.Generator().manual_seed(0))


def test_gradient_norms_on_gpu_match_cpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _model(), _windows()
    cpu = per_sequence_gradient_stats(m, w, batch_size=4)
    gpu = per_sequence_gradient_stats(copy.deepcopy(m).cuda(), w, batch_size=4, device=torch.device("cuda"))
    for k in cpu:
        assert torch.allclose(cpu[k], gpu[k].cpu(), rtol=1e-3, atol=1e-8), k


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_offload_on_gpu_equals_resident_on_gpu(method):
    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _model(), _windows()
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    prune_with(a, method=method, sparsity=0.5, windows=w, device=torch.device("cuda"), blocksize=32)
    prune_with(b, method=method, sparsity=0.5, windows=w, device=torch.device("cuda"), blocksize=32, offload=True)
    assert next(iter(block_linears(b).values())).weight.device.type == "cpu"
    for (n, la), lb in zip(block_linears(a).items(), block_linears(b).values()):
        assert torch.allclose(la.weight.cpu(), lb.weight.cpu(), atol=1e-5), n


@pytest.mark.parametrize("method, profile", [("wanda", "uniform"), ("ria", "uniform"), ("wanda++", "uniform"),
                                             ("wanda", "owl")])
def test_masks_on_gpu_match_cpu(method, profile):
    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _model(), _windows()
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    pa = prune_model(a, method, sparsity=0.6, calibration=Calibration(w), profile=Profile(profile, 5.0, 0.05))
    pb = prune_model(b, method, sparsity=0.6, calibration=Calibration(w), profile=Profile(profile, 5.0, 0.05),
                     device=torch.device("cuda"))
    assert pa == pytest.approx(pb)
    agree = [float(((la.weight == 0) == (lb.weight.cpu() == 0)).float().mean())
             for la, lb in zip(block_linears(a).values(), block_linears(b).values())]
    assert min(agree) > 0.999


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_magnitude_masks_with_ties_are_identical_on_cpu_and_gpu(pattern):
    """Weights with many equal magnitudes (as dequantised GGUF weights have): the stable tie rule
    (lower index pruned first) gives the same mask on both devices, bit for bit."""
    m = _model()
    with torch.no_grad():
        for lin in block_linears(m).values():
            lin.weight.copy_(torch.round(lin.weight * 64) / 64)  # few distinct levels: ties everywhere
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    prune_with(a, method="magnitude", sparsity=0.5, pattern=pattern)
    prune_with(b, method="magnitude", sparsity=0.5, pattern=pattern, device=torch.device("cuda"))
    for (n, la), lb in zip(block_linears(a).items(), block_linears(b).values()):
        assert torch.equal(la.weight == 0, lb.weight.cpu() == 0), n


def test_prune_model_honours_the_device_for_magnitude(monkeypatch):
    from taylorlab.pruning import registry

    seen = []
    real = registry.make_mask

    def spy(scores, *a, **k):
        seen.append(scores.device.type)
        return real(scores, *a, **k)

    monkeypatch.setattr(registry, "make_mask", spy)
    prune_with(_model(), method="magnitude", sparsity=0.5, device=torch.device("cuda"))
    assert seen and set(seen) == {"cuda"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_statistics_equal_their_fp32_products(dtype):
    """The Hessian and the per-sequence weight gradients of half-precision inputs (fp32 accumulation on
    the tensor cores) equal the fp32 products of the same numbers, up to the order of the additions."""
    from taylorlab.pruning.gradients import per_sequence_weight_grads
    from taylorlab.pruning.stats import HALF_GEMM_FP32_OUT, gram_

    assert HALF_GEMM_FP32_OUT, "this torch cannot multiply half-precision matrices into fp32"
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4096, 256, device="cuda", generator=g).to(dtype)
    acc = torch.ones(256, 256, device="cuda")
    gram_(acc, x, 0.5, 2.0)
    xf = x.float()
    torch.testing.assert_close(acc, 0.5 + 2.0 * xf.t() @ xf, rtol=1e-5, atol=1e-3)
    gy = torch.randn(3, 128, 64, device="cuda", generator=g).to(dtype)
    xs = torch.randn(3, 128, 96, device="cuda", generator=g).to(dtype)
    got = per_sequence_weight_grads(gy, xs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.bmm(gy.float().transpose(1, 2), xs.float()), rtol=1e-5, atol=1e-4)


def test_fused_rmsprop_steps_equal_torch_rmsprop():
    """Wanda++'s fused RMSprop update against torch.optim.RMSprop, over steps with fresh gradients,
    on tensors shaped as a block's weights (sizes that do not fill the kernel's last tile included)."""
    pytest.importorskip("triton")
    from taylorlab.pruning.optim import FusedRMSprop, rmsprop

    gen = torch.Generator(device="cuda").manual_seed(0)
    ours = [torch.randn(s, device="cuda", generator=gen) for s in [(256, 128), (384, 96), (1000, 7)]]
    theirs, start = [w.clone() for w in ours], [w.clone() for w in ours]
    a, b = rmsprop(ours, 1e-3), torch.optim.RMSprop(theirs, lr=1e-3)
    assert isinstance(a, FusedRMSprop)
    for _ in range(6):
        for x, y in zip(ours, theirs):
            g = torch.randn(x.shape, device="cuda", generator=gen)
            x.grad, y.grad = g.clone(), g.clone()
        a.step()
        b.step()
        a.zero_grad()
        assert all(x.grad is None for x in ours)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-8)  # 1e-5 of a step (~lr): rounding only
    assert all(float((x - s).abs().max()) > 1e-3 for x, s in zip(ours, start))  # the steps moved them


def test_wandapp_regional_optimisation_with_and_without_the_fused_update():
    """The whole regional optimisation, fused update or torch's, gives the same masks and weights to
    rounding (fp32 products)."""
    pytest.importorskip("triton")
    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _model(), _windows()
    a, b = copy.deepcopy(m).cuda(), copy.deepcopy(m).cuda()
    opts = dict(windows=w, batch_size=4, ro_iters=2, ro_samples=4, ro_lr=1e-4, device=torch.device("cuda"))
    prune_with(a, "wanda++", **opts)
    prune_with(b, "wanda++", ro_fused=False, **opts)
    for (name, x), y in zip(block_linears(a).items(), block_linears(b).values()):
        same = float(((x.weight == 0) == (y.weight == 0)).float().mean())
        assert same > 0.999, name
        torch.testing.assert_close(x.weight, y.weight, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sequential_walk_on_gpu_matches_cpu_and_keeps_the_block_walks_qkv_masks(method):
    """walk=sequential on the GPU: the masks the CPU gives, and block 0's q/k/v masks (whose input is
    the same in both walks) equal to the block walk's on the same device."""
    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _model(), _windows()
    a, b, c = copy.deepcopy(m), copy.deepcopy(m), copy.deepcopy(m)
    prune_with(a, method=method, windows=w, blocksize=32, walk="sequential")
    prune_with(b, method=method, windows=w, blocksize=32, walk="sequential", device=torch.device("cuda"))
    prune_with(c, method=method, windows=w, blocksize=32, walk="block", device=torch.device("cuda"))
    agree = [float(((la.weight == 0) == (lb.weight.cpu() == 0)).float().mean())
             for la, lb in zip(block_linears(a).values(), block_linears(b).values())]
    assert min(agree) > 0.999
    for (n, lb), lc in zip(block_linears(b).items(), block_linears(c).values()):
        if n.startswith("model.layers.0.self_attn.") and n.split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
            assert torch.equal(lb.weight == 0, lc.weight == 0), n


def _liger_model(dtype):
    from taylorlab.models import build_llama

    # head_dim 64 and 2 KV heads as in SmolLM2/Llama; the fused rotary kernel pads other sizes itself
    return build_llama(257, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=128, seed=0).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernels_reproduce_the_models_own_outputs_and_are_put_back(dtype):
    pytest.importorskip("liger_kernel")
    from taylorlab.pruning.kernels import fused_kernels

    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _liger_model(dtype).cuda(), _windows().cuda()
    with torch.no_grad():
        eager = m(w).logits.float()
        with fused_kernels(m, "liger", torch.device("cuda")) as n:
            fused = m(w).logits.float()
        after = m(w).logits.float()
    assert n == {"rms_norm": 7, "mlp": 3, "rope": 1}
    assert torch.equal(after, eager)  # everything put back
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (fused - eager).abs().max() <= tol * eager.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernels_give_the_same_gradient_norms_and_gblm_masks(dtype):
    pytest.importorskip("liger_kernel")
    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _liger_model(dtype).cuda(), _windows()
    cuda = torch.device("cuda")
    eager = per_sequence_gradient_stats(m, w, batch_size=4, device=cuda)
    fused = per_sequence_gradient_stats(m, w, batch_size=4, device=cuda, kernels="liger")
    rtol = 1e-4 if dtype == torch.float32 else 5e-2
    for k in eager:  # the summed squares, layer by layer: close in norm, not bitwise
        assert (fused[k] - eager[k]).norm() <= rtol * eager[k].norm(), k
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    cal = Calibration(w, gradients=eager, gradient_samples=w.shape[0])
    prune_model(a, "gblm", sparsity=0.5, calibration=cal, device=cuda, walk="sequential")
    prune_model(b, "gblm", sparsity=0.5, calibration=Calibration(w, gradients=fused, gradient_samples=w.shape[0]),
                device=cuda, walk="sequential", kernels="liger")
    agree = [float(((la.weight == 0) == (lb.weight == 0)).float().mean())
             for la, lb in zip(block_linears(a).values(), block_linears(b).values())]
    # fp32: near-ties only; bf16: the model's own rounding differs after each fused op
    assert min(agree) > (0.999 if dtype == torch.float32 else 0.98), agree


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_square_sum_equals_the_batched_gemms_and_their_sum(norm, dtype):
    """The Triton kernel forms the same fp32 products as the batched GEMM; only the order of the fp32
    additions differs. Ragged sizes (no tile divides them) and a transposed operand included."""
    from taylorlab.pruning.sqsum import add_square_sum

    g = torch.Generator(device="cuda").manual_seed(0)
    gy = torch.randn(3, 1000, 389, device="cuda", generator=g).to(dtype)
    x = torch.randn(3, 203, 1000, device="cuda", generator=g).to(dtype).transpose(1, 2)
    acc = torch.rand(389, 203, device="cuda", generator=g)
    prod = torch.bmm(gy.transpose(1, 2), x, torch.float32)
    ref = acc + (prod.square() if norm == "l2" else prod.abs()).sum(0)
    assert add_square_sum(acc, gy, x, norm) is True
    assert (acc - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_gradient_norms_with_and_without_the_fused_square_sum_agree():
    torch.backends.cuda.matmul.allow_tf32 = False
    m, w = _liger_model(torch.bfloat16).cuda(), _windows()
    cuda = torch.device("cuda")
    fused = per_sequence_gradient_stats(m, w, batch_size=4, device=cuda)
    plain = per_sequence_gradient_stats(m, w, batch_size=4, device=cuda, fused_sum=False)
    for k in plain:
        assert (fused[k] - plain[k]).norm() <= 1e-4 * plain[k].norm(), k
