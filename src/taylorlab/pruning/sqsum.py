"""``acc += sum_n (dY_n^T X_n)^2`` (or ``|.|``) in one Triton kernel: GBLM's per-sequence sum without
the per-sequence gradients in memory.

The plain way (``gradients._per_sequence_hook`` off CUDA) forms every sequence's weight gradient
``G_n = dY_n^T X_n`` as a [B, out, in] fp32 tensor with one batched GEMM, then reads it again to
square and sum it over n: on a 7B model that is 26 GB written and read back per sequence. Here each
program computes one [BM, BN] tile of every ``G_n`` in registers (fp32 accumulation of the half-
precision products, as the tensor cores give the batched GEMM), squares it, adds it over n and adds
the sum to ``acc`` once. The products are the same; only the order of the fp32 additions differs.

Used for half-precision operands on CUDA when Triton imports; elsewhere ``None`` from ``kernel()``
and the caller keeps the batched GEMM (in fp32, Triton's ``dot`` would round the inputs to TF32).
"""

from __future__ import annotations

import torch

from taylorlab.pruning.triton_lazy import lazy_triton


def _build(triton, tl):
    configs = [triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
               triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
               triton.Config({"BM": 256, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3)]

    @triton.jit
    def sq_sum_kernel(a_ptr, b_ptr, c_ptr, NB: tl.constexpr, T: tl.constexpr, M, N, s_ab, s_at, s_am,
                      s_bb, s_bt, s_bn, s_cm, s_cn, L1: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        grid_m, grid_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
        # grouped tile order: neighbouring programs share operand panels in L2
        per_group = GROUP_M * grid_n
        first_m = (pid // per_group) * GROUP_M
        size_m = tl.minimum(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % size_m
        pid_n = (pid % per_group) // size_m
        rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
        rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
        rk = tl.arange(0, BK).to(tl.int64)
        in_m, in_n = rm < M, rn < N
        total = tl.zeros((BM, BN), dtype=tl.float32)
        for nb in range(NB):
            a_base = a_ptr + nb * s_ab  # available() keeps every operand under 2^31 elements
            b_base = b_ptr + nb * s_bb
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, T, BK):
                t = k0 + rk
                in_t = t < T
                a = tl.load(a_base + t[:, None] * s_at + rm[None, :] * s_am, mask=in_t[:, None] & in_m[None, :],
                            other=0.0)  # [BK, BM] of dY_n
                b = tl.load(b_base + t[:, None] * s_bt + rn[None, :] * s_bn, mask=in_t[:, None] & in_n[None, :],
                            other=0.0)  # [BK, BN] of X_n
                acc = tl.dot(tl.trans(a), b, acc)
            if L1:
                total += tl.abs(acc)
            else:
                total += acc * acc
        c = c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn
        keep = in_m[:, None] & in_n[None, :]
        tl.store(c, tl.load(c, mask=keep) + total, mask=keep)

    # restore_value: the tuning runs add into the accumulator too; it is put back after each
    tuned = triton.autotune(configs=configs, key=["M", "N", "T", "NB"], restore_value=["c_ptr"])(sq_sum_kernel)

    def launch(acc: torch.Tensor, gy: torch.Tensor, x: torch.Tensor, l1: bool, config=None) -> None:
        """``config``: fixed block sizes (BM, BN, BK, GROUP_M) instead of the tuned ones."""
        nb, t, m = gy.shape
        n = x.shape[2]

        def grid(meta):
            return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)

        args = (gy, x, acc, nb, t, m, n, *gy.stride(), *x.stride(), *acc.stride())
        if config is None:
            tuned[grid](*args, L1=l1)
        else:
            bm, bn, bk, gm = config
            sq_sum_kernel[grid](*args, L1=l1, BM=bm, BN=bn, BK=bk, GROUP_M=gm)

    return launch


# the kernel launcher, compiled on first use; None where Triton cannot be imported
kernel = lazy_triton(_build)


def available(gy: torch.Tensor, x: torch.Tensor, acc: torch.Tensor) -> bool:
    """Whether the kernel can take these operands: half precision of one dtype, CUDA, an fp32 accumulator."""
    return (gy.is_cuda and gy.dtype in (torch.float16, torch.bfloat16) and x.dtype == gy.dtype
            and acc.dtype == torch.float32 and acc.is_cuda and max(gy.numel(), x.numel(), acc.numel()) < 2**31
            and kernel() is not None)


def add_square_sum(acc: torch.Tensor, gy: torch.Tensor, x: torch.Tensor, norm: str = "l2") -> bool:
    """``acc[out, in] += sum_n (gy_n^T x_n)^2`` (l2) or ``|gy_n^T x_n|`` (l1), with gy [B, T, out] and
    x [B, T, in]; True if the fused kernel ran, False if it cannot here (nothing done then)."""
    if not available(gy, x, acc):
        return False
    kernel()(acc, gy, x, norm == "l1")
    return True
