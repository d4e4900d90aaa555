"""Fused kernels for the model's own element-wise work during the pruning passes (``kernels=liger``).

On a GPU the gradient pass and the block walk spend a large share of their time outside the GEMMs, in
the model's RMSNorm (in fp32), rotary embedding, SiLU-times-up and their backward, each a chain of
separate kernels. Liger-Kernel's Triton kernels do each in one. ``fused_kernels(model, "liger")``
swaps them in for the duration of a ``with`` block and puts the model's own back afterwards:

- every RMSNorm of a supported family: Liger's RMSNorm, casting as the model does (only the inverse
  RMS in fp32, the product in the input's dtype);
- every gated MLP whose activation is SiLU: ``down(silu_mul(gate(x), up(x)))``; the three linears are
  still called as modules, so the pruning's hooks see them as before;
- the family's ``apply_rotary_pos_emb``: Liger's rotary kernel.

The numbers are not bitwise the model's own (Liger rounds once where the eager chain rounds after each
op), so masks can differ on near-ties; the GPU tests bound the difference. Only the families whose
modules are known to have these exact forms are patched (Llama, Mistral, Qwen2, Qwen3); any other
model is refused with a clear error, not silently half-patched. Liger is imported only here and only
when asked for, so the library stays importable without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from taylorlab.errors import ConfigError

KERNELS = ("eager", "liger")
# the transformers model families whose RMSNorm, MLP and rotary function have the Llama forms, and the
# prefix of their class names
_PREFIXES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
FAMILIES = tuple(_PREFIXES)


def check_kernels(kernels: str, key: str = "prune.kernels") -> None:
    """The kernel choice is known, and Liger is installed when it is asked for (config time)."""
    if kernels not in KERNELS:
        raise ConfigError(f"{key}={kernels!r} is not one of {', '.join(KERNELS)}.")
    if kernels == "liger" and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError(f"{key}=liger needs the liger-kernel package (pip install 'taylorlab[gpu]'); "
                          f"use {key}=eager.")


def _family_modules() -> Dict[str, types.ModuleType]:
    out = {}
    for fam in FAMILIES:
        try:
            out[fam] = importlib.import_module(f"transformers.models.{fam}.modeling_{fam}")
        except ImportError:  # an older transformers without this family
            continue
    return out


def fusable(model: torch.nn.Module,
            fams: Optional[Dict[str, types.ModuleType]] = None) -> Tuple[List[str], List[str], List[str]]:
    """(RMSNorm module names, MLP module names, family modules whose rotary function is used) that
    ``fused_kernels`` would replace in ``model``; empty lists for a model of another family."""
    fams = _family_modules() if fams is None else fams
    kinds = {}  # class -> (kind, family)
    for fam, mm in fams.items():
        for kind in ("RMSNorm", "MLP"):
            cls = getattr(mm, f"{_PREFIXES[fam]}{kind}", None)
            if cls is not None:
                kinds[cls] = (kind, fam)
    norms, mlps, used = [], [], set()
    for name, mod in model.named_modules():
        kind, fam = kinds.get(type(mod), (None, None))
        if kind == "RMSNorm":
            norms.append(name)
        elif kind == "MLP" and _is_silu(getattr(mod, "act_fn", None)):
            mlps.append(name)
        else:
            continue
        used.add(fam)
    return norms, mlps, sorted(used)


def _is_silu(act) -> bool:
    if isinstance(act, torch.nn.SiLU):
        return True
    from transformers.activations import SiLUActivation

    return isinstance(act, SiLUActivation)


@contextmanager
def fused_kernels(model: torch.nn.Module, kernels: str = "eager", device: torch.device = torch.device("cpu"),
                  key: str = "prune.kernels") -> Iterator[Dict[str, int]]:
    """Inside the block, ``model`` runs its RMSNorms, gated MLPs and rotary embedding through Liger's
    fused kernels (``kernels="liger"``) on ``device`` (the compute device: the model itself may sit on
    the CPU, its blocks visiting the device); ``"eager"`` changes nothing. Yields how many modules of
    each kind were replaced. Everything is put back on exit, errors included."""
    check_kernels(kernels, key)
    if kernels == "eager":
        yield {"rms_norm": 0, "mlp": 0, "rope": 0}
        return
    fam_mods = _family_modules()
    norms, mlps, fams = fusable(model, fam_mods)
    if not norms:
        raise ConfigError(f"{key}=liger supports the {', '.join(FAMILIES)} model families, not "
                          f"{type(model).__name__}; use {key}=eager.")
    if torch.device(device).type != "cuda":
        raise ConfigError(f"{key}=liger runs Triton kernels on a CUDA device, not {device}; use {key}=eager "
                          "(or a GPU device).")
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.rope import LigerRopeFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    def norm_forward(self, hidden_states):
        # not in place: a backward hook elsewhere may hold the output gradient
        return LigerRMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, 0.0, "llama", False)

    def mlp_forward(self, x):
        return self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x)))

    def rope(q, k, cos, sin, unsqueeze_dim=1):
        return LigerRopeFunction.apply(q, k, cos, sin, None, unsqueeze_dim)

    mods = dict(model.named_modules())
    saved_rope = {fam: fam_mods[fam].apply_rotary_pos_emb for fam in fams}
    patched = []
    try:
        for name in norms:
            mods[name].forward = types.MethodType(norm_forward, mods[name])
            patched.append(mods[name])
        for name in mlps:
            mods[name].forward = types.MethodType(mlp_forward, mods[name])
            patched.append(mods[name])
        for fam in fams:
            fam_mods[fam].apply_rotary_pos_emb = rope
        yield {"rms_norm": len(norms), "mlp": len(mlps), "rope": len(fams)}
    finally:
        for mod in patched:
            del mod.forward  # the instance attribute goes; the class's forward is seen again
        for fam, fn in saved_rope.items():
            fam_mods[fam].apply_rotary_pos_emb = fn
