"""Zero-shot accuracy through lm-evaluation-harness (``pip install 'taylorlab[eval]'``).

Tasks are named as in lm-eval: a user with hub access runs ``hellaswag``, ``arc_easy``, ... by name;
without it, the task ``taylorlab_cloze`` is built here from local text and read by lm-eval's own
custom-task YAML over a local JSON-lines file, so something real runs offline: from held-out
articles, each item is one sentence as context and four candidate next sentences — the true one and
three taken from other articles (seeded) — scored by the model's log-likelihood (acc, acc_norm).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Dict, List, Sequence

from taylorlab.errors import ConfigError

LOCAL_TASK = "taylorlab_cloze"

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _sentences(text: str, max_chars: int = 300) -> List[str]:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [p for p in parts if 20 <= len(p) <= max_chars]


def build_cloze_task(texts: Sequence[str], task_dir: Path, n_items: int = 200, seed: int = 0,
                     max_chars: int = 300) -> Path:
    """Write ``taylorlab_cloze`` (JSON-lines data + lm-eval task YAML) into ``task_dir``. Sentences are
    at most ``max_chars`` characters, so context and answer fit a short model context (a character is
    at least a token's worth of text for the ASCII prose here)."""
    rng = random.Random(seed)
    docs = [s for s in (_sentences(t, max_chars) for t in texts) if len(s) >= 2]
    if len(docs) < 4:
        raise ConfigError("the zero-shot cloze task needs at least 4 documents with two sentences each.")
    pairs = [(d, i) for d, s in enumerate(docs) for i in range(len(s) - 1)]
    rng.shuffle(pairs)
    task_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for d, i in pairs[:n_items]:
        others = [o for o in range(len(docs)) if o != d]
        distractors = [rng.choice(docs[o]) for o in rng.sample(others, 3)]
        choices = distractors + [docs[d][i + 1]]
        rng.shuffle(choices)
        rows.append({"context": docs[d][i], "choices": choices, "label": choices.index(docs[d][i + 1])})
    data = task_dir / f"{LOCAL_TASK}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (task_dir / f"{LOCAL_TASK}.yaml").write_text(TASK_YAML.format(task=LOCAL_TASK, data=data.resolve()), encoding="utf-8")
    return task_dir


def run_lm_eval(model, tokenizer, tasks: Sequence[str], task_dir: Path | None = None, batch_size: int = 8,
                limit: int | None = None, device: str = "cpu", seed: int = 0) -> Dict[str, Dict[str, float]]:
    """``lm_eval.simple_evaluate`` on the model in memory; returns {task: {metric: value}}."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError("zero-shot tasks need lm-evaluation-harness: pip install 'taylorlab[eval]' "
                          "(or set evaluate.zero_shot_tasks=[]).") from exc
    tm = TaskManager(include_path=str(task_dir) if task_dir else None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ConfigError(f"lm-eval knows no task {', '.join(unknown)}; local: {LOCAL_TASK}, or any lm-eval task name.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    ctx = getattr(model.config, "max_position_embeddings", None)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              **({"max_length": int(ctx)} if ctx else {}))
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, log_samples=False)
    res = {}
    for task, metrics in out["results"].items():
        res[task] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not k.startswith("alias") and "stderr" not in k}
    return res
