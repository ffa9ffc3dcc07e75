"""Text every install has, for training small causal LMs, and the check that keeps evaluation text out of it.

Two sources, both offline and free to redistribute:

- ``recovery``: ``sparsekit/data/recovery_corpus.txt``, 810 everyday sentences written for this project;
- ``pydoc``: the English documentation topics in Python's standard library (``pydoc_data.topics``,
  PSF licence, about 465k characters), cut into sentences and paragraphs. Its exact text depends on
  the Python version; ``pydoc_digest`` names the version a model was trained on.

Held-out pieces of the documentation are not stored as text (it is not this project's text): ``piece_refs``
names each piece by source, topic and index with its SHA-256, and ``rebuild_pieces`` cuts the installed
topics again and keeps the pieces whose hash still matches.

A text counts as *leaked* into training text when its whole normalised text (case and spacing
ignored) is there or when any run of ``SHINGLE_WORDS`` consecutive words of it is.
``benchmarks/train_causal_lm.py`` and ``scripts/train_lm_small.py`` (the shipped ``lm:small``) both
refuse to train on text holding a built-in evaluation or calibration sentence.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "MIN_UNIT_WORDS", "SHINGLE_WORDS", "check_no_leakage", "corpus_units", "leaked", "normalise", "piece_refs",
    "piece_sha256", "pydoc_digest", "pydoc_topic_units", "pydoc_units", "rebuild_pieces", "shingles", "words",
]

SHINGLE_WORDS = 10
"""A run of this many consecutive words shared with the training text counts as leakage."""
MIN_UNIT_WORDS = 3
"""Shorter pieces of the documentation (headings, stray symbols) are dropped."""


def normalise(text: str) -> str:
    """Lower case, runs of whitespace as one space."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """The lower-cased alphanumeric words of ``text`` (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words of ``text`` (empty when it has fewer)."""
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def _cut(text: str) -> list[str]:
    pieces = re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
    return [" ".join(p.split()) for p in pieces if len(p.split()) >= MIN_UNIT_WORDS]


def pydoc_topic_units(topics: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Each documentation topic (sorted by name) cut into sentences and paragraphs, whitespace collapsed,
    pieces under ``MIN_UNIT_WORDS`` words dropped.

    Args:
        topics: topic name -> text (default: this Python's ``pydoc_data.topics.topics``).

    Returns:
        topic name -> its pieces, in order (a piece's index here is its locator in ``piece_refs``).
    """
    if topics is None:
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
    return {k: _cut(topics[k]) for k in sorted(topics)}


def pydoc_units() -> list[str]:
    """Every piece of ``pydoc_topic_units()``, topic after topic."""
    return [p for pieces in pydoc_topic_units().values() for p in pieces]


def pydoc_digest() -> str:
    """SHA-256 of this Python's documentation topics (they change between Python versions)."""
    import pydoc_data.topics

    return hashlib.sha256(repr(sorted(pydoc_data.topics.topics.items())).encode()).hexdigest()


def corpus_units(extra_texts: Sequence[str] = ()) -> dict[str, list[str]]:
    """Training text by source: ``recovery`` (one sentence each), ``pydoc`` and ``extra`` (non-empty lines).

    Args:
        extra_texts: more text (each string split into its non-empty lines).

    Returns:
        source -> list of units (sentences or paragraphs), in a fixed order.
    """
    from ..data import recovery_corpus

    units = {"recovery": list(recovery_corpus()), "pydoc": pydoc_units()}
    extra = [" ".join(line.split()) for t in extra_texts for line in t.splitlines() if line.strip()]
    if extra:
        units["extra"] = extra
    return units


def piece_sha256(text: str) -> str:
    """SHA-256 of a piece's UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def piece_refs(texts: Sequence[str]) -> list[dict[str, Any]]:
    """References to corpus pieces, for storing them without the documentation's text.

    Args:
        texts: pieces of ``corpus_units()`` (``recovery`` or ``pydoc``), exactly as cut there.

    Returns:
        One dict per text, in order: ``{"source": "recovery", "index", "text", "sha256"}`` (this project's
        own sentences keep their text) or ``{"source": "pydoc", "topic", "index", "sha256"}`` (no text; the
        index counts the topic's pieces in ``pydoc_topic_units()``). A text found in several places gets the
        first one, recovery before pydoc.

    Raises:
        ValueError: a text is not a piece of either source.
    """
    from ..data import recovery_corpus

    where: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(recovery_corpus()):
        where.setdefault(t, {"source": "recovery", "index": i, "text": t})
    for topic, pieces in pydoc_topic_units().items():
        for i, t in enumerate(pieces):
            where.setdefault(t, {"source": "pydoc", "topic": topic, "index": i})
    missing = [t for t in texts if t not in where]
    if missing:
        raise ValueError(f"{len(missing)} text(s) are not pieces of the recovery corpus or of this Python's "
                         f"documentation topics, e.g. {missing[0][:80]!r}")
    return [dict(where[t], sha256=piece_sha256(t)) for t in texts]


def _ref_text(ref: Any, topics: dict[str, list[str]] | None, n: int) -> str | None:
    from ..data import recovery_corpus

    if not isinstance(ref, dict) or not isinstance(ref.get("sha256"), str) or not isinstance(ref.get("index"), int):
        raise ValueError(f"piece reference {n} is not a dict with an integer 'index' and a 'sha256' string: "
                         f"{ref!r:.120}")
    i, source = ref["index"], ref.get("source")
    if source == "recovery":
        corpus = recovery_corpus()
        return ref["text"] if isinstance(ref.get("text"), str) else corpus[i] if 0 <= i < len(corpus) else None
    if source == "pydoc" and isinstance(ref.get("topic"), str):
        pieces = (topics or {}).get(ref["topic"], [])
        return pieces[i] if 0 <= i < len(pieces) else None
    raise ValueError(f"piece reference {n} has source {source!r}: expected 'recovery', or 'pydoc' with a 'topic'")


def rebuild_pieces(refs: Sequence[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts of ``piece_refs`` references, cut again from this install's sources, each checked by its hash.

    Args:
        refs: references as ``piece_refs`` writes them (a plain string is taken as the piece's text).

    Returns:
        (the texts whose SHA-256 matches, in order; the references that could not be rebuilt: topic or index
        missing here, or a different text, as when this Python's documentation topics changed).

    Raises:
        ValueError: a malformed reference.
    """
    topics = pydoc_topic_units() if any(isinstance(r, dict) and r.get("source") == "pydoc" for r in refs) else None
    texts: list[str] = []
    failed: list[dict[str, Any]] = []
    for n, ref in enumerate(refs):
        if isinstance(ref, str):
            texts.append(ref)
            continue
        text = _ref_text(ref, topics, n)
        if text is not None and piece_sha256(text) == ref["sha256"]:
            texts.append(text)
        else:
            failed.append(ref)
    return texts, failed


def leaked(texts: Iterable[str], units: Iterable[str]) -> list[str]:
    """The ``texts`` found in the training ``units``: whole (normalised) or by a shared run of
    ``SHINGLE_WORDS`` words, runs across unit boundaries included (training rows are packed end to end).

    Args:
        texts: what must stay out of training (evaluation text).
        units: the training text pieces.

    Returns:
        The leaked texts, in the order given.
    """
    units = list(units)
    joined = "\n".join(normalise(u) for u in units)
    seen = shingles(" ".join(units))
    return [t for t in texts if normalise(t) in joined or not shingles(t).isdisjoint(seen)]


def check_no_leakage(units: Iterable[str], sentences: Sequence[str] | None = None) -> None:
    """Raise if any built-in sentence (or a run of ``SHINGLE_WORDS`` of its words) is in the text.

    Args:
        units: the training text pieces.
        sentences: the sentences to look for (default: every built-in sentence of
            ``sparsekit.models.sentences``, which holds both the evaluation and the calibration ones).

    Raises:
        ValueError: naming the sentences found (at most five).
    """
    from .sentences import SENTENCES

    found = leaked(SENTENCES if sentences is None else sentences, units)
    if found:
        listing = "; ".join(repr(s[:80]) for s in found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
        raise ValueError(f"{len(found)} built-in evaluation/calibration sentence(s) appear in the training text, "
                         f"so the model would be scored on text it trained on: {listing}")
