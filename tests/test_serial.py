"""sparsekit.serial: one rule for unknown fields, missing fields and versions, and round-trips."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from sparsekit.serial import check_keys, check_version, dumps, from_json, to_json


@dataclass(frozen=True)
class Point:
    x: float
    y: float = 0.0


@dataclass(frozen=True)
class Shape:
    name: str
    points: tuple[Point, ...] = ()
    pair: tuple[int, str] = (0, "")
    anchor: Point | None = None
    tags: dict[str, float] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)


SHAPE = Shape("tri", (Point(1.5, 2.0), Point(0.0)), (3, "a"), Point(-1.0, 4.25), {"w": 0.5}, [1, 2])
SHAPE_DICT = {
    "name": "tri",
    "points": [{"x": 1.5, "y": 2.0}, {"x": 0.0, "y": 0.0}],
    "pair": [3, "a"],
    "anchor": {"x": -1.0, "y": 4.25},
    "tags": {"w": 0.5},
    "sizes": [1, 2],
}


def test_to_json_matches_the_hand_written_dict():
    assert to_json(SHAPE) == SHAPE_DICT
    assert to_json(Point(2.0), version=3) == {"x": 2.0, "y": 0.0, "version": 3}
    assert dumps(Point(1.0, 2.0)) == '{"x": 1.0, "y": 2.0}'
    assert json.loads(dumps(SHAPE)) == SHAPE_DICT


def test_round_trips_rebuild_nested_dataclasses_and_tuples():
    back = from_json(Shape, SHAPE_DICT)
    assert back == SHAPE
    assert isinstance(back.points, tuple) and isinstance(back.points[0], Point)
    assert isinstance(back.pair, tuple) and isinstance(back.anchor, Point)
    assert from_json(Shape, dumps(SHAPE)) == SHAPE  # JSON text too
    assert from_json(Shape, {"name": "x", "anchor": None}) == Shape("x")
    # Scalars are kept as written, so canonical text reads back to the same text (the same cache key).
    text = '{"x": 1, "y": 2.5}'
    assert dumps(from_json(Point, text)) == text and isinstance(from_json(Point, text).x, int)


def test_unknown_field_is_refused_and_named():
    with pytest.raises(ValueError, match=r"unknown Point field\(s\) \['z'\]; known fields: x, y"):
        from_json(Point, {"x": 1.0, "z": 2.0})
    # also inside a nested record, named by its place
    bad = {**SHAPE_DICT, "anchor": {"x": 1.0, "colour": "red"}}
    with pytest.raises(ValueError, match=r"unknown Shape.anchor field\(s\) \['colour'\]"):
        from_json(Shape, bad)
    with pytest.raises(ValueError, match=r"unknown study spec field\(s\) \['methdos'\]"):
        check_keys({"methdos": 1}, ["methods"], what="study spec")


def test_missing_field_takes_its_default_or_is_named():
    assert from_json(Point, {"x": 1.0}) == Point(1.0, 0.0)
    with pytest.raises(ValueError, match=r"the Point lacks field\(s\) \['x'\]"):
        from_json(Point, {"y": 1.0})
    with pytest.raises(ValueError, match=r"the pattern lacks field\(s\) \['name'\]"):
        check_keys({}, ["name", "params"], ["name"], what="pattern")


def test_not_an_object_is_refused():
    with pytest.raises(ValueError, match="not valid JSON"):
        from_json(Point, "{oops")
    with pytest.raises(ValueError, match="must be a JSON object"):
        from_json(Point, "[1, 2]")


def test_versions_current_newer_older_and_migrated():
    assert from_json(Point, {"x": 1.0, "version": 2}, version=2) == Point(1.0)
    with pytest.raises(ValueError, match="carries no version"):
        from_json(Point, {"x": 1.0}, version=2)
    with pytest.raises(ValueError, match=r"version 3, newer than this sparsekit reads \(2\)"):
        from_json(Point, {"x": 1.0, "version": 3}, version=2)
    with pytest.raises(ValueError, match="has version 1; this sparsekit reads version 2 and has no migration from "
                                         "version 1"):
        from_json(Point, {"x": 1.0, "version": 1}, version=2)
    # version 0 called the field "a"; version 1 called it "x"; version 2 added "y" (defaulted anyway)
    steps = {0: lambda d: {"x": d.pop("a"), **d}, 1: lambda d: {**d, "y": -1.0}}
    assert from_json(Point, {"a": 5.0, "version": 0}, version=2, migrations=steps) == Point(5.0, -1.0)
    assert from_json(Point, {"x": 5.0, "version": 1}, version=2, migrations=steps) == Point(5.0, -1.0)
    # the check on its own, for versions kept in a header (text, as safetensors metadata holds it)
    assert check_version("2", 2, "training run") == {}
    with pytest.raises(ValueError, match="training run has version 'x', not a whole number"):
        check_version("x", 2, "training run")
