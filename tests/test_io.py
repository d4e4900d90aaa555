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
