"""Your own text as the corpus: ``data.files=[a.txt, b.jsonl]``.

Plain text files give one document per paragraph (blank-line separated), JSON-lines files
(``.jsonl``/``.json``) one document per line from its ``text`` field; both are read with
``datasets`` (its ``text`` builder with ``sample_by="paragraph"`` and its ``json`` builder). The
split rule: the documents, in file order, are shuffled with ``data.seed``; the first
``data.holdout`` fraction (at least one document) is the test split, the next as much the
validation split, the rest the training split; calibration windows are drawn from the training
split (as the pruning papers draw theirs from C4's training set).

``inspect_files`` checks every file before anything runs: it exists, is valid UTF-8, holds text (and,
for JSON-lines, a ``text`` string on every line), and reports the characters for the size check.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import datasets

from taylorlab.errors import ConfigError

JSON_SUFFIXES = (".jsonl", ".json")
CHARS_PER_TOKEN = 3  # the size check's estimate (English BPE runs about 3-4.5); the train stage checks exactly


@dataclass
class FileInfo:
    path: Path
    kind: str  # text | json
    chars: int
    docs: int
    sha256: str = ""


def digest(infos: List[FileInfo]) -> str:
    """One fingerprint of the files' contents: the data stage's hash changes when a file does."""
    h = hashlib.sha256()
    for i in infos:
        h.update(f"{i.path.resolve()}\0{i.sha256}\0".encode())
    return h.hexdigest()[:16]


def _kind(path: Path) -> str:
    return "json" if path.suffix.lower() in JSON_SUFFIXES else "text"


def inspect_files(files: Sequence[str]) -> List[FileInfo]:
    """Check each file (ConfigError naming the file and what is wrong) and count its text."""
    out = []
    for name in files:
        path = Path(str(name)).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.files: {path} does not exist or is not a file.")
        kind = _kind(path)
        decoder = codecs.getincrementaldecoder("utf-8")()
        chars = docs = 0
        pending = ""
        line_no = 0
        sha = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while True:
                    chunk = fh.read(1 << 20)
                    sha.update(chunk)
                    text = decoder.decode(chunk, final=not chunk)
                    if kind == "json":
                        pending += text
                        *lines, pending = pending.split("\n")
                        if not chunk:
                            lines.append(pending)
                        for line in lines:
                            line_no += 1
                            if not line.strip():
                                continue
                            try:
                                row = json.loads(line)
                            except ValueError:
                                raise ConfigError(f"data.files: {path} line {line_no} is not JSON; a JSON-lines "
                                                  f"file holds one object per line with a \"text\" field.") from None
                            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                                raise ConfigError(f"data.files: {path} line {line_no} has no \"text\" string field.")
                            if row["text"].strip():
                                chars += len(row["text"])
                                docs += 1
                    else:
                        pending += text
                        *paragraphs, pending = pending.split("\n\n")
                        if not chunk:
                            paragraphs.append(pending)
                        for para in paragraphs:
                            if para.strip():
                                chars += len(para)
                                docs += 1
                    if not chunk:
                        break
        except UnicodeDecodeError as exc:
            raise ConfigError(f"data.files: {path} is not valid UTF-8 (byte {exc.start} of a chunk: "
                              f"{exc.reason}); convert it, e.g. iconv -f latin1 -t utf-8.") from None
        except OSError as exc:
            raise ConfigError(f"data.files: {path} cannot be read ({exc.strerror or exc}).") from None
        if chars == 0 or docs == 0:
            raise ConfigError(f"data.files: {path} holds no text.")
        out.append(FileInfo(path, kind, chars, docs, sha.hexdigest()))
    return out


def check_size(infos: List[FileInfo], holdout: float, needs: Dict[str, int]) -> None:
    """The training part must hold the tokens the stages ask for (``needs``: key -> tokens),
    estimated at ``CHARS_PER_TOKEN`` characters per token."""
    docs = sum(i.docs for i in infos)
    if docs < 3:
        raise ConfigError(f"data.files hold {docs} document(s); the split needs at least 3 (test, validation, train).")
    train_tokens = int(sum(i.chars for i in infos) * (1 - 2 * holdout) / CHARS_PER_TOKEN)
    for key, tokens in needs.items():
        if tokens > train_tokens:
            raise ConfigError(f"data.files: about {train_tokens} training tokens (at {CHARS_PER_TOKEN} characters "
                              f"per token), fewer than the {tokens} that {key} asks for; add text or lower it.")


def load_documents(files: Sequence[str], cache_dir: Optional[Path] = None) -> List[str]:
    """Every document of the files, in file order (datasets' text and json builders)."""
    docs: List[str] = []
    for name in files:
        path = Path(str(name)).expanduser()
        if _kind(path) == "json":
            ds = datasets.load_dataset("json", data_files=str(path), split="train",
                                       cache_dir=str(cache_dir) if cache_dir else None)
        else:
            ds = datasets.load_dataset("text", data_files=str(path), split="train", sample_by="paragraph",
                                       cache_dir=str(cache_dir) if cache_dir else None)
        docs.extend(t for t in ds["text"] if t and t.strip())
    return docs


def split_documents(docs: List[str], seed: int, holdout: float) -> Dict[str, List[Dict[str, str]]]:
    """test / validation / train by the module's rule; calibration is the training split."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n = max(1, int(len(docs) * holdout))
    test, val, train = order[:n], order[n:2 * n], order[2 * n:]

    def rows(ids):
        return [{"title": f"doc-{i}", "text": docs[i]} for i in ids]

    return {"train": rows(train), "validation": rows(val), "calibration": rows(train), "test": rows(test)}
