import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "pipelines" / "run.py"

os.environ.setdefault("WANDB_MODE", "disabled")  # tests that check W&B set it themselves
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


def run_cli(args, out_dir, env=None, check=False, timeout=900):
    """Run the real entry point in a subprocess, as a user would."""
    e = {**os.environ, "CI": "1", **(env or {})}
    flags = [a for a in args if a.startswith("-")]
    cmd = [sys.executable, str(ENTRY), *flags, f"out_dir={out_dir}", *[a for a in args if not a.startswith("-")]]
    proc = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def tiny_llama():
    from taylorlab.models import build_llama

    return build_llama(97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, seed=0)
