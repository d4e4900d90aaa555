import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")  # tests that check W&B set it themselves
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker gets its share of the cores, and so do the pipelines and Slurm jobs
# it starts (they inherit OMP_NUM_THREADS): two workers each running OpenMP on every core run several
# times slower than each on its own (the oversubscription the local launcher's per-stage threads avoid)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)
torch.set_num_threads(_THREADS)


@pytest.fixture
def tiny_llama():
    from taylorlab.models import build_llama

    return build_llama(97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, seed=0)


def pytest_collection_modifyitems(config, items):
    """The longest files first (the real-model tier, then the Slurm tests, which mostly wait on the
    cluster): under ``make test``'s two processes they then run beside the many short ones instead of
    after them. The sort is stable; the order inside a file is kept."""
    def rank(item):
        return 0 if item.get_closest_marker("realmodel") else 1 if item.get_closest_marker("slurm") else 2

    items.sort(key=rank)
