"""Your own text (data.files): plain text and JSON-lines read with datasets, split by the stated
rule; a bad file is one error line before anything runs."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers import ROOT, run_cli
from taylorlab.data import userfiles
from taylorlab.errors import ConfigError


def _corpus(tmp_path, n=60, words=400):
    text = "\n\n".join(f"Document {i}. " + " ".join(f"word{(i * 7 + k) % 97}" for k in range(words)) for i in range(n))
    p = tmp_path / "mine.txt"
    p.write_text(text, encoding="utf-8")
    return p


def _compose(overrides):
    from taylorlab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="pipeline", overrides=overrides)


def test_text_and_jsonl_documents_are_read_and_split_by_the_rule(tmp_path):
    txt = _corpus(tmp_path, n=30)
    jl = tmp_path / "more.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"json doc {i} " + "x" * 50, "id": i}) for i in range(10)) + "\n")
    infos = userfiles.inspect_files([str(txt), str(jl)])
    assert [i.docs for i in infos] == [30, 10] and all(i.sha256 for i in infos)
    docs = userfiles.load_documents([str(txt), str(jl)], cache_dir=tmp_path / "cache")
    assert len(docs) == 40 and docs[0].startswith("Document 0.") and docs[-1].startswith("json doc 9")
    s = userfiles.split_documents(docs, seed=0, holdout=0.1)
    assert (len(s["test"]), len(s["validation"]), len(s["train"])) == (4, 4, 32)
    texts = lambda k: {r["text"] for r in s[k]}  # noqa: E731
    assert not texts("test") & texts("train") and not texts("validation") & texts("train")
    assert texts("calibration") == texts("train")
    assert userfiles.split_documents(docs, 0, 0.1) == s  # seeded


@pytest.mark.parametrize("content, words", [
    (b"", "holds no text"),
    (b"\n\n   \n", "holds no text"),
    ("caf\u00e9 ol\u00e9".encode("latin-1"), "is not valid UTF-8"),
])
def test_bad_text_files_are_config_errors(tmp_path, content, words):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        userfiles.inspect_files([str(p)])


def test_bad_jsonl_and_missing_files_are_config_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match='line 2 has no "text"'):
        userfiles.inspect_files([str(p)])
    p.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        userfiles.inspect_files([str(p)])
    with pytest.raises(ConfigError, match="does not exist"):
        userfiles.inspect_files([str(tmp_path / "nope.txt")])


def test_the_config_check_sizes_the_corpus_and_keys_the_stage_on_its_contents(tmp_path):
    from taylorlab.config.schema import validate

    p = _corpus(tmp_path, n=60)
    cfg = _compose([f"data.files=[{p}]", "train.max_batches=10", "train.batch_size=2", "train.seq_len=32"])
    validate(cfg)
    first = cfg.data.files_digest
    assert first and cfg.data.files == [str(p.resolve())]
    with pytest.raises(ConfigError, match="fewer than the"):
        validate(_compose([f"data.files=[{p}]", "train.max_batches=100000", "train.batch_size=8"]))
    p.write_text(p.read_text() + "\n\nOne more paragraph.", encoding="utf-8")
    cfg2 = _compose([f"data.files=[{p}]", "train.max_batches=10", "train.batch_size=2", "train.seq_len=32"])
    validate(cfg2)
    assert cfg2.data.files_digest != first  # an edited file is a new data stage


def test_a_bad_file_is_one_error_line_and_nothing_runs(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("na\u00efve".encode("latin-1") * 100)
    proc = run_cli([f"data.files=[{bad}]", "debug=fast", "launcher=inline", "stages=[data]"], tmp_path / "out")
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(err) == 1 and err[0].startswith("error: data.files:") and "UTF-8" in err[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("data-*"))


def test_the_pipeline_trains_on_your_own_text(tmp_path):
    p = _corpus(tmp_path, n=80, words=300)
    run_cli([f"data.files=[{p}]", "debug=fast", "launcher=inline", "stages=[evaluate_dense]", "run=mine",
             "data.tokenizer_vocab_size=300"], tmp_path / "out", check=True)
    (d,) = list((tmp_path / "out" / "mine").glob("data-*"))
    test = [json.loads(x)["text"] for x in (d / "test.jsonl").read_text().splitlines()]
    train = [json.loads(x)["text"] for x in (d / "train.jsonl").read_text().splitlines()]
    assert len(test) == 8 and len(train) == 64 and all(t.startswith("Document") for t in test)
    (ev,) = list((tmp_path / "out" / "mine").glob("evaluate_dense-*"))
    assert json.loads((ev / "result.json").read_text())["ppl"] > 1
