import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")  # tests that check W&B set it themselves
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture
def tiny_llama():
    from taylorlab.models import build_llama

    return build_llama(97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, seed=0)


# Files whose tests share something costly or exclusive: a module fixture that runs the pipeline (the
# real-model tier, the dashboard sweep, the fault-injection reference run) or the session's Slurm
# cluster. Under ``make test`` (pytest-xdist, --dist loadgroup) each runs whole on one process; every
# other test is handed out on its own. xdist starts the groups first, the largest first.
GROUPED_FILES = ("test_real_model.py", "test_slurm.py", "test_faults.py", "test_dashboard.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in GROUPED_FILES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
