"""Statistics accumulated by forward hooks on a block's prunable layers."""

from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch
from torch import nn

from taylorlab.pruning.structure import in_features


class _Sums:
    """The running sums of one layer's inputs (shared by the layers that read the same input)."""

    def __init__(self, cols: int, hessian: bool, device: torch.device):
        self.sq_sum = torch.zeros(cols, dtype=torch.float32, device=device)
        self.hessian = torch.zeros(cols, cols, dtype=torch.float32, device=device) if hessian else None
        self.nsamples = 0


# torch >= 2.8 multiplies half-precision CUDA matrices into an fp32 result (``mm(a, b, out_dtype)``)
HALF_GEMM_FP32_OUT = "out_dtype" in (torch.mm.__doc__ or "")


def fp32_out_on_tensor_cores(t: torch.Tensor) -> bool:
    """Whether products of ``t`` can come out in fp32 straight from the tensor cores (half on CUDA)."""
    return t.is_cuda and t.dtype in (torch.float16, torch.bfloat16) and HALF_GEMM_FP32_OUT


def gram_(acc: torch.Tensor, x: torch.Tensor, beta: float, alpha: float) -> None:
    """``acc <- beta * acc + alpha * x^T x`` in fp32. On CUDA, half-precision inputs multiply on the
    tensor cores with fp32 accumulation and output: their products are exact in fp32, so this is the
    fp32 product of the same numbers up to the order of the additions (an fp32 GEMM without TF32 is
    several times slower). Elsewhere the inputs are made fp32 first."""
    if fp32_out_on_tensor_cores(x):
        acc.mul_(beta).add_(torch.mm(x.t(), x, torch.float32), alpha=alpha)
        return
    xf = x.float()
    acc.mul_(beta).addmm_(xf.t(), xf, alpha=alpha)


class InputStats:
    """Per-layer input statistics over calibration sequences.

    ``sq_sum[j] = sum over tokens of x_j^2`` (Wanda's activation norm, squared) and, when asked,
    ``hessian = (2 / N) sum over tokens of x x^T`` (SparseGPT; fp32), N = number of sequences.
    Layers that read the very same input tensor (q/k/v, gate/up) share one set of sums (``attach``).
    """

    def __init__(self, layer: nn.Module, hessian: bool, name: str = ""):
        self.name = name
        self._sums = _Sums(in_features(layer), hessian, layer.weight.device)
        self.leader: Optional["InputStats"] = None  # the layer whose sums these are, when shared
        self.regional = None  # set by walk_blocks(regional=True): sum_n (d ||block_n(x)||_2 / dW)^2

    sq_sum = property(lambda self: self._sums.sq_sum)
    hessian = property(lambda self: self._sums.hessian)
    nsamples = property(lambda self: self._sums.nsamples)

    def add(self, x: torch.Tensor, sequences: Optional[int] = None) -> None:
        """Add one call's input. ``sequences`` is how many calibration sequences the call holds; it
        is needed where a model flattens [batch, tokens, d] to [batch * tokens, d] before a layer
        (OPT's fc1/fc2), where the tensor's shape no longer says it."""
        s = self._sums
        b = sequences if sequences is not None else (x.shape[0] if x.dim() == 3 else 1)
        x2 = x.detach().reshape(-1, x.shape[-1])
        # one read of x, squared and summed in fp32
        s.sq_sum += torch.linalg.vector_norm(x2, dim=0, dtype=torch.promote_types(x2.dtype, torch.float32)).square()
        if s.hessian is not None:
            # running mean as in the reference: H <- H * n/(n+b) + 2/(n+b) * X^T X
            gram_(s.hessian, x2, s.nsamples / (s.nsamples + b), 2.0 / (s.nsamples + b))
        s.nsamples += b

    def follow(self, leader: "InputStats") -> None:
        """Share ``leader``'s sums from now on: this layer reads the same input."""
        self._sums, self.leader = leader._sums, leader

    def act_norm(self) -> torch.Tensor:
        """sqrt(sum_tokens x^2 / N): the reference Wanda/GBLM activation term."""
        return torch.sqrt(self.sq_sum / max(self.nsamples, 1))


def attach(layers: dict, hessian: bool, sequences: Optional[Callable[[], int]] = None,
           call: Optional[Callable[[], int]] = None):
    """Hooks that feed every layer's input to its ``InputStats``; ``sequences()`` tells how many
    sequences the current call holds (the caller knows; the tensor may not).

    A layer whose input, at the first call, is the very tensor an earlier layer of the same call
    received (q/k/v after one norm, gate/up) shares that layer's sums instead of computing them again
    (SparseGPT's Hessian is the costly part); on every later call the input must again be that
    tensor, else it is an error rather than a silently wrong statistic. ``call()``, when given, is the
    index of the calibration call under way: calls may then interleave (the sequential walk runs them
    as coroutines), call 0 is the first, and each call's inputs are told apart."""
    stats = {name: InputStats(layer, hessian, name) for name, layer in layers.items()}
    first_call = [True]
    seen = []  # the leaders that received an input so far in the first call
    last = {}  # (leader name, call) -> weak reference to the input the leader took in that call

    def hook(name):
        s = stats[name]

        def fn(mod, inp):
            x = inp[0]
            c = call() if call is not None else 0
            if (c == 0) if call is not None else first_call[0]:
                if call is None and len(seen) and seen[0] is s:  # the first layer again: the first call is over
                    first_call[0] = False
                else:
                    lead = next((o for o in seen if (ref := last.get((o.name, c))) is not None and ref() is x), None)
                    if lead is not None:
                        s.follow(lead)
                        return
                    seen.append(s)
            if s.leader is not None:
                ref = last.get((s.leader.name, c))
                if ref is None or ref() is not x:
                    raise RuntimeError(f"{name} read the same input as {s.leader.name} in the first calibration "
                                       "call but not in a later one; its statistics cannot be shared")
                return
            s.add(x, sequences() if sequences else None)
            last[(name, c)] = weakref.ref(x)

        return fn

    # before the layer runs (its input is all a statistic reads): a hook registered after these on the
    # block's last linear may then stop the call without losing that layer's statistic
    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    return stats, handles
