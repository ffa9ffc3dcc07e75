"""family_points keeps each finished setting: a call stopped half-way and run again measures only the rest,
and equals a call that was never stopped."""
from dataclasses import asdict

import pytest

from sparsekit.cache import get_cache
from sparsekit.structured import equal_cost
from sparsekit.structured.equal_cost import family_points
from tests.conftest import shared_model

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(unstructured=(0.5, 0.7), nm=((2, 4),), slicegpt=(), monarch_blocks=(4,))
"""Four settings on the digits MLP: two unstructured, one N:M, one Monarch."""


@pytest.fixture
def counted(monkeypatch):
    """How many settings each call measured (the two measuring functions, counted)."""
    calls: list[str] = []
    masked, structured = equal_cost._masked_row, equal_cost._structured_row

    def count_masked(loaded, config, family, setting, measure):
        calls.append(f"{family} {setting}")
        return masked(loaded, config, family, setting, measure)

    def count_structured(loaded, family, value, dense_params, measure):
        calls.append(f"{family} {value}")
        return structured(loaded, family, value, dense_params, measure)

    monkeypatch.setattr(equal_cost, "_masked_row", count_masked)
    monkeypatch.setattr(equal_cost, "_structured_row", count_structured)
    return calls


def rows(points):
    return [asdict(r) for r in points.rows]


def stop_at(step: int):
    def progress(fraction: float, message: str) -> None:
        if fraction >= step / 4 and message != "done":
            raise KeyboardInterrupt
    return progress


def test_one_function_under_both_names():
    import sparsekit.compare
    import sparsekit.structured

    assert sparsekit.compare.family_points is sparsekit.structured.family_points is family_points


def test_a_stopped_call_goes_on_and_equals_an_unstopped_one(tmp_cache, counted):
    loaded = shared_model("digits:mlp")
    reference = family_points(loaded, resume=False, progress=False, **SETTINGS)
    assert len(counted) == 4 and reference.resumed == []
    counted.clear()

    with pytest.raises(KeyboardInterrupt):
        family_points(loaded, progress=stop_at(2), **SETTINGS)  # stopped as the third setting starts
    assert counted == ["unstructured 50%", "unstructured 70%"]
    counted.clear()

    again = family_points(loaded, progress=False, **SETTINGS)
    assert counted == ["N:M 2:4", "Monarch 4"]  # only what the stopped call had not finished
    assert again.resumed == ["unstructured 50%", "unstructured 70%"]
    assert rows(again) == rows(reference)
    assert again.summary_card().headline["kept from an earlier call"] == "2"
    counted.clear()

    third = family_points(loaded, progress=False, **SETTINGS)
    assert counted == [] and rows(third) == rows(reference)


def test_other_inputs_never_take_kept_settings(tmp_cache, counted):
    loaded = shared_model("digits:mlp")
    family_points(loaded, progress=False, **SETTINGS)
    counted.clear()
    # Another scoring method, and a quality function of one's own (named or not): each measures afresh.
    other = family_points(loaded, method="random", progress=False, **SETTINGS)
    assert other.resumed == [] and len(counted) == 4
    counted.clear()

    def accuracy_only(module):
        return {"acc": loaded.quality(module)["accuracy"]}

    mine = family_points(loaded, quality=accuracy_only, progress=False, **SETTINGS)
    assert mine.resumed == [] and len(counted) == 4
    counted.clear()
    named = family_points(loaded, quality=accuracy_only, quality_key="acc v1", progress=False, **SETTINGS)
    assert named.resumed == [] and len(counted) == 4
    counted.clear()
    named_again = family_points(loaded, quality=accuracy_only, quality_key="acc v1", progress=False, **SETTINGS)
    assert counted == [] and rows(named_again) == rows(named)


def test_without_resume_nothing_is_read_or_written(tmp_cache, counted):
    loaded = shared_model("digits:mlp")
    family_points(loaded, resume=False, progress=False, **SETTINGS)
    assert not [k for k in get_cache().iterkeys() if str(k).startswith("family-point:")]
    family_points(loaded, progress=False, **SETTINGS)
    counted.clear()
    family_points(loaded, resume=False, progress=False, **SETTINGS)
    assert len(counted) == 4


@pytest.mark.parametrize("damage", ["not json", '{"family": "N:M"}', '{"family": 3}', "[]"])
def test_a_damaged_kept_setting_is_measured_again(tmp_cache, counted, damage):
    loaded = shared_model("digits:mlp")
    reference = family_points(loaded, progress=False, **SETTINGS)
    keys = [k for k in get_cache().iterkeys() if str(k).startswith("family-point:")]
    assert len(keys) == 4  # one per measured setting (Monarch 4 fits the MLP)
    get_cache().set(keys[0], damage)
    counted.clear()
    again = family_points(loaded, progress=False, **SETTINGS)
    assert len(counted) == 1 and len(again.resumed) == 3
    assert rows(again) == rows(reference)


@pytest.mark.parametrize("key", ["", 5, b"x"])
def test_a_bad_quality_key_is_refused(tmp_cache, key):
    loaded = shared_model("digits:mlp")
    with pytest.raises(ValueError, match="quality_key must be a non-empty string"):
        family_points(loaded, quality=loaded.quality, quality_key=key, progress=False, **SETTINGS)
