"""Zero-shot accuracy through lm-evaluation-harness, offline, on a task built from local text."""

import json

import pytest

from helpers import run_cli
from taylorlab.errors import ConfigError
from taylorlab.evaluation.zero_shot import LOCAL_TASK, build_cloze_task, run_lm_eval

pytest.importorskip("lm_eval")

TEXTS = [
    "The river flows north. It reaches the sea at a wide delta. Fishermen live along its banks all year.",
    "Copper is a soft metal. It conducts heat and electricity very well. Wires are often made of copper.",
    "The violin has four strings. Players draw a bow across them. Its sound carries far in a hall.",
    "Bees collect nectar from flowers. They turn it into honey in the hive. A colony may hold thousands.",
    "The moon orbits the earth. Its phases repeat every month or so. Tides follow its pull on the oceans.",
]


def test_cloze_items_hold_the_true_next_sentence_once(tmp_path):
    d = build_cloze_task(TEXTS, tmp_path, n_items=8, seed=0)
    rows = [json.loads(x) for x in (d / f"{LOCAL_TASK}.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for r in rows:
        doc = next(t for t in TEXTS if r["context"] in t)
        truth = r["choices"][r["label"]]
        assert doc.index(r["context"]) < doc.index(truth)  # the answer follows the context in its article
        assert sum(c in doc for c in r["choices"]) == 1 and len(set(r["choices"])) == 4
    assert str((d / f"{LOCAL_TASK}.jsonl").resolve()) in (d / f"{LOCAL_TASK}.yaml").read_text()


def test_lm_eval_scores_a_model_in_memory_and_refuses_unknown_tasks(tiny_llama, tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(i): i - 32 for i in range(32, 127)}
    vocab["<unk>"] = 95
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<unk>")
    d = build_cloze_task(TEXTS, tmp_path, n_items=6)
    res = run_lm_eval(tiny_llama, tok, [LOCAL_TASK], d, batch_size=4)
    assert 0.0 <= res[LOCAL_TASK]["acc"] <= 1.0 and res[LOCAL_TASK]["sample_len"] == 6
    with pytest.raises(ConfigError, match="no task"):
        run_lm_eval(tiny_llama, tok, ["no_such_task_xyz"], d)


def test_evaluate_stage_reports_zero_shot_accuracy(tmp_path):
    run_cli(["debug=fast", "run=zs", "launcher=inline", "stages=[evaluate_dense]",
             "evaluate.zero_shot_tasks=[taylorlab_cloze]", "evaluate.zero_shot_items=20",
             "model.max_position_embeddings=256"], tmp_path, check=True)
    (res,) = list((tmp_path / "zs").glob("evaluate_dense-*/result.json"))
    zs = json.loads(res.read_text())["zero_shot"][LOCAL_TASK]
    assert zs["sample_len"] == 20 and 0.0 <= zs["acc"] <= 1.0
    rows = [json.loads(x) for x in (res.parent / "zero_shot_tasks" / f"{LOCAL_TASK}.jsonl").read_text().splitlines()]
    assert len(rows) == 20
