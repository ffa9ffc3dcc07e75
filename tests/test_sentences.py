from collections import Counter

from sparsekit.models.sentences import SENTENCES, TOPICS


def test_enough_sentences_all_unique():
    assert len(SENTENCES) >= 200
    normalized = [s.strip().lower() for s in SENTENCES]
    assert len(set(normalized)) == len(normalized)


def test_items_are_clean_strings():
    for s in SENTENCES:
        assert isinstance(s, str)
        assert s
        assert s == s.strip()
        assert s.isascii()


def test_topics_aligned_and_balanced():
    assert len(TOPICS) == len(SENTENCES)
    assert all(isinstance(t, str) and t and t == t.strip() for t in TOPICS)
    counts = Counter(TOPICS)
    assert len(counts) >= 15
    assert min(counts.values()) >= 8


def test_length_distribution():
    lengths = [len(s.split()) for s in SENTENCES]
    assert sum(n < 10 for n in lengths) >= 50
    assert sum(n > 20 for n in lengths) >= 50
    assert min(lengths) >= 4
    assert max(lengths) <= 45
