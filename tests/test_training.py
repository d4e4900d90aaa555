import json

import pytest
import torch

from taylorlab.errors import ArtifactError, TaylorlabError
from taylorlab.training import TrainSettings, batch_order, make_batches, train


def data(vocab=97):
    tokens = torch.randint(0, vocab, (6 * 4 * 16,), generator=torch.Generator().manual_seed(1))
    return make_batches(tokens, 16, 4)


def test_batches_and_orders():
    b = data()
    assert b.shape == (6, 4, 16)
    assert sorted(batch_order(6, "shuffled", 3)) == list(range(6))
    assert batch_order(6, "shuffled", 3) == batch_order(6, "shuffled", 3)
    assert batch_order(4, "reverse") == [3, 2, 1, 0]


def test_resume_reaches_bitwise_identical_weights(tiny_llama, tmp_path):
    import copy

    b, order = data(), batch_order(6, "shuffled", 0)
    s = TrainSettings(lr=1e-2, warmup_steps=2, checkpoint_every=2)
    ref = copy.deepcopy(tiny_llama)
    train(ref, b, order, s)

    class Stop(Exception):
        pass

    def stop_after_3(step, metrics):
        if step == 2:
            raise Stop

    part = copy.deepcopy(tiny_llama)
    with pytest.raises(Stop):
        train(part, b, order, s, ckpt_dir=tmp_path, on_step=stop_after_3)
    resumed = copy.deepcopy(tiny_llama)
    out = train(resumed, b, order, s, ckpt_dir=tmp_path)
    assert out["resumed_from"] == 2
    for (n, p), q in zip(ref.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n


def test_nan_loss_is_a_one_line_error_and_keeps_checkpoints(tiny_llama, tmp_path):
    b, order = data(), list(range(6))
    s = TrainSettings(lr=1e30, warmup_steps=0, grad_clip=None, checkpoint_every=1)
    with pytest.raises(TaylorlabError) as err:
        train(tiny_llama, b, order, s, ckpt_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "train.lr" in msg
    assert any(p.name.startswith("step-") for p in tmp_path.iterdir())


def test_corrupt_checkpoint_is_a_clear_error_and_is_kept(tiny_llama, tmp_path):
    b, order = data(), list(range(6))
    s = TrainSettings(checkpoint_every=2)
    import copy

    train(copy.deepcopy(tiny_llama), b, order[:], s, ckpt_dir=tmp_path)
    latest = sorted(tmp_path.glob("step-*"))[-1]
    (latest / "state.pt").write_bytes(b"garbage")
    with pytest.raises(ArtifactError) as err:
        train(tiny_llama, b, order, s, ckpt_dir=tmp_path)
    assert "corrupt" in str(err.value) and "\n" not in str(err.value)
    assert (latest / "state.pt").exists()  # nothing deleted


def test_checkpoint_without_meta_is_ignored(tiny_llama, tmp_path):
    (tmp_path / "step-0000004").mkdir()  # half-written: no meta.json
    out = train(tiny_llama, data(), list(range(6)), TrainSettings(checkpoint_every=100), ckpt_dir=tmp_path)
    assert out["resumed_from"] == 0


@pytest.mark.parametrize("warmup, total", [(0, 10), (1, 10), (3, 10), (4, 5), (2, 2)])
def test_the_schedule_reaches_its_peak_once_and_its_floor_at_the_last_step(warmup, total):
    from taylorlab.training.trainer import lr_lambda

    s = TrainSettings(lr=1.0, warmup_steps=warmup, min_lr_ratio=0.1, schedule="cosine")
    f = lr_lambda(s, total)
    values = [f(t) for t in range(total)]
    assert values.count(1.0) == 1 and values.index(1.0) == max(warmup - 1, 0)
    if total - 1 > max(warmup - 1, 0):
        assert values[-1] == pytest.approx(0.1, abs=1e-12)
    after = values[max(warmup - 1, 0):]
    assert all(a > b for a, b in zip(after, after[1:]))  # strictly decreasing after the peak
    assert all(a < b for a, b in zip(values[:warmup], values[1:warmup]))  # strictly rising in the warmup
