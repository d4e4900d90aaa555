"""Data-parallel training: two gloo processes on the CPU reach the weights of one process on the
same global batches (to float tolerance)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from taylorlab.errors import TaylorlabError
from taylorlab.models import build_llama
from taylorlab.training import TrainSettings, distributed, train


def _model():
    return build_llama(97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, seed=0)


def _batches():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 97, (6, 4, 16), generator=g)


SETTINGS = TrainSettings(lr=3e-3, warmup_steps=2, checkpoint_every=100, grad_clip=1.0)
ORDER = [3, 1, 4, 0, 5, 2]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = distributed.detect()
    assert info.world_size == world and info.rank == rank
    distributed.init(info, "cpu")
    model = _model()
    result = train(model, _batches(), ORDER, SETTINGS, dist=info)
    if info.is_main:
        torch.save({"state": model.state_dict(), "loss": result["final_loss"]}, out)
    distributed.shutdown(info)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_tasks_match_one_process(tmp_path):
    single = _model()
    ref = train(single, _batches(), ORDER, SETTINGS)
    out = tmp_path / "ddp.pt"
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    got = torch.load(out, weights_only=True)
    assert got["loss"] == pytest.approx(ref["final_loss"], rel=1e-4)
    moved = 0.0
    for name, p in single.state_dict().items():
        torch.testing.assert_close(got["state"][name], p, rtol=1e-4, atol=1e-5, msg=name)
        moved += float((p - _model().state_dict()[name]).abs().sum())
    assert moved > 0  # training changed the weights, so the agreement means something


def test_uneven_global_batch_is_a_clear_error():
    info = distributed.DistInfo(rank=0, world_size=3)
    with pytest.raises(TaylorlabError, match="multiple of the number of tasks"):
        distributed.shard(torch.zeros(4, 8), info)
    assert distributed.shard(torch.arange(6).view(6, 1), distributed.DistInfo(1, 3)).flatten().tolist() == [2, 3]


def test_local_sub_jobs_get_one_gpu_each_round_robin():
    """ctx.fan_out on one host (launcher=local): N sub-jobs asking one GPU each run one per GPU, not
    all on the first (what submitit's local executor does by itself); more jobs than GPUs share."""
    from taylorlab.engine.fanout import gpu_sets, visible_gpus

    assert gpu_sets(4, 1, [0, 1, 2, 3]) == [[0], [1], [2], [3]]
    assert gpu_sets(3, 2, [0, 1, 2, 3]) == [[0, 1], [2, 3], [0, 1]]
    assert gpu_sets(3, 1, [5, 7]) == [[5], [7], [5]]  # CUDA_VISIBLE_DEVICES's ids, as given
    assert gpu_sets(2, 0, [0, 1]) == [[], []] and gpu_sets(2, 1, []) == [[], []]
    import os

    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = "3,1"
        assert visible_gpus() == [3, 1]
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old
