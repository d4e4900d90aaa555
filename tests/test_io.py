import pytest

from taylorlab.errors import ArtifactError
from taylorlab.io import atomic_path, atomic_write_json, read_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("killed")
    assert read_json(target) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_folder_replaces_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "v").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v"]


def test_corrupt_json_is_a_one_line_artifact_error(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{not json")
    with pytest.raises(ArtifactError) as err:
        read_json(p)
    assert "\n" not in str(err.value) and "corrupt" in str(err.value)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_artifacts_take_the_modes_the_umask_asks_for(tmp_path, umask, expected):
    """safetensors creates 0600 files; every artifact is readable as the user's umask allows."""
    import os
    import stat

    import torch

    from taylorlab.io import atomic_save_tensors

    old = os.umask(umask)
    try:
        atomic_save_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(3)})
        atomic_write_json(tmp_path / "m.json", {"x": 1})
        with atomic_path(tmp_path / "model") as tmp:
            tmp.mkdir()
            atomic_save_tensors(tmp / "model.safetensors", {"w": torch.ones(2)})
    finally:
        os.umask(old)
    for p in (tmp_path / "t.safetensors", tmp_path / "m.json", tmp_path / "model" / "model.safetensors"):
        assert stat.S_IMODE(p.stat().st_mode) == expected, p
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == (0o777 & ~umask)
