"""What every benchmark result records: the command, the git commit, the machine, library versions."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path


def machine() -> dict:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
            "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1))
    except ImportError:
        pass
    return info


def versions(names=("torch", "transformers", "safetensors", "tokenizers", "numpy", "gguf", "accelerate", "llmcompressor",
                      "compressed-tensors", "datasets", "triton", "liger-kernel")) -> dict:
    from importlib import metadata  # not taylorlab.engine: the GPU image lacks the engine's dependencies

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def require_cuda(what: str) -> int:
    """0 where a CUDA device is visible; else the one-line error a GPU benchmark gives, and 2."""
    import torch

    if torch.cuda.is_available():
        return 0
    print(f"error: this benchmark {what}; no CUDA device is visible", file=sys.stderr)
    return 2


def git_commit() -> str:
    env_commit = os.environ.get("TAYLORLAB_COMMIT")
    if env_commit:
        return env_commit
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def record(path: Path, results: dict, command: str | None = None) -> None:
    payload = {"command": command or " ".join([Path(sys.executable).name, *sys.argv]), "commit": git_commit(),
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "versions": versions(), **results}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
