"""The run store contract (``sparsekit.store.RunStore``), on a small record kind built here: save, list
newest first, load, rename, delete, a damaged entry named and skipped, orphaned runs, unknown kinds
and formats refused, the safetensors form of a run."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from sparsekit import serial
from sparsekit.cache import get_cache
from sparsekit.store import RecordHeader, RunStore, pack_run, process_token, run_store, unpack_run

HEADER = RecordHeader("sparsekit-test-run", 2, "test-run entry")


@dataclass
class Note:
    """A record of the test kind."""

    text: str
    name: str = ""
    run_id: str = ""
    status: str = "complete"
    owner: str = ""
    message: str = ""

    def summary(self) -> dict:
        # With hashed keys the summary names the run: an index rebuilt from the entries needs it.
        return {"run_id": self.run_id, "name": self.name, "text": self.text, "status": self.status,
                "owner": self.owner}


def note_to_text(note: Note) -> str:
    return json.dumps({**HEADER.fields(), "note": serial.to_json(note)})


def note_from_text(text: str) -> Note:
    data = json.loads(text)
    HEADER.check(data)
    return serial.from_json(Note, data["note"])


def make_store() -> RunStore[Note]:
    return RunStore("test-run", what="test run", index_key="test-run-index", to_bytes=note_to_text,
                    from_bytes=note_from_text, orphan_record=lambda n: f"orphan {n.text}",
                    orphan_summary=lambda e: f"orphan {e['text']}")


def test_save_list_newest_first_load_rename_delete(tmp_cache):
    store = make_store()
    ids = [store.save(Note(text)) for text in ("a", "b", "c")]
    assert len(set(ids)) == 3 and all(len(i) == 12 for i in ids)
    expected = [{"name": "", "text": t, "status": "complete", "owner": "", "run_id": i} for t, i in zip("abc", ids)]
    assert store.runs() == expected[::-1]
    assert store.runs(oldest_first=True) == expected
    assert store.load(ids[1]) == Note("b", run_id=ids[1])
    # The entry is the kind's own text, under the kind's key.
    assert json.loads(get_cache().get(store.key(ids[0]))) == {
        "format": "sparsekit-test-run", "version": "2",
        "note": {"text": "a", "name": "", "run_id": ids[0], "status": "complete", "owner": "", "message": ""}}
    # A re-saved (renamed) run keeps its place.
    assert store.rename(ids[0], "  first ") == Note("a", name="first", run_id=ids[0])
    assert [e["name"] for e in store.runs()] == ["", "", "first"]
    with pytest.raises(ValueError, match="at most 80 characters"):
        store.rename(ids[0], "x" * 81)
    assert store.delete(ids[1]) is True
    assert [e["run_id"] for e in store.runs()] == [ids[2], ids[0]]
    assert store.delete(ids[1]) is False
    with pytest.raises(KeyError, match="no saved test run with id"):
        store.load(ids[1])
    # A given id wins over the record's (content-keyed kinds such as benchmark runs).
    assert store.save(Note("d"), run_id="digest") == "digest"
    assert store.runs()[0]["run_id"] == "digest"


def test_damaged_entry_is_named_and_skipped(tmp_cache):
    store = make_store()
    good, bad = store.save(Note("ok")), store.save(Note("soon damaged"))
    get_cache().set(store.key(bad), '{"format": "sparsekit-test-run", "version": "2", "note": {"txt": 1}}')
    with pytest.raises(ValueError, match=r"unknown Note field\(s\) \['txt'\]"):
        store.load(bad)
    records, problems = store.load_all()
    assert records == [Note("ok", run_id=good)]
    assert len(problems) == 1 and repr(bad) in problems[0] and "test run" in problems[0]
    # The index still lists it, so it can be deleted.
    assert [e["run_id"] for e in store.runs()] == [bad, good]
    assert store.delete(bad) and store.load_all() == ([Note("ok", run_id=good)], [])


def test_unreadable_index_is_rebuilt_from_the_entries(tmp_cache):
    store = make_store()
    ids = [store.save(Note(t)) for t in "xy"]
    get_cache().set("test-run-index", "{not json")
    # Hashed keys hide the id: the summary is read back from the entries (the record's run_id).
    assert sorted(e["run_id"] for e in store.runs()) == sorted(ids)


def test_orphaned_running_run_reads_as_stopped(tmp_cache):
    store = make_store()
    dead = process_token(2**22 + 12345)  # no such process: its start time reads as ''
    host, pid, _ = dead.rsplit(":", 2)
    live = store.save(Note("live", status="running", owner=process_token()))
    gone = store.save(Note("gone", status="running", owner=f"{host}:{pid}:1"))
    assert store.load(live).status == "running"
    record = store.load(gone)
    assert (record.status, record.message) == ("stopped", "orphan gone")
    assert [(e["status"], e.get("message")) for e in store.runs()] == [("stopped", "orphan gone"), ("running", None)]


def test_unknown_kind_and_other_formats_are_refused(tmp_cache):
    store = make_store()
    assert run_store("test-run") is store
    with pytest.raises(ValueError, match=r"unknown run kind 'no-such-run'; known kinds: .*test-run"):
        run_store("no-such-run")
    other = store.save(Note("x"))
    get_cache().set(store.key(other), json.dumps({"format": "sparsekit-training-run", "version": "1"}))
    with pytest.raises(ValueError, match='not a sparsekit test-run entry \\(missing "format": "sparsekit-test-run"\\)'):
        store.load(other)
    get_cache().set(store.key(other), json.dumps({"format": "sparsekit-test-run", "version": "3", "note": {}}))
    with pytest.raises(ValueError, match="unsupported version '3': the test-run entry has version 3, newer than"):
        store.load(other)
    get_cache().set(store.key(other), json.dumps({"format": "sparsekit-test-run", "version": "1", "note": {}}))
    with pytest.raises(ValueError, match="has no migration from version 1"):
        store.load(other)


def test_header_migrates_an_older_record():
    header = RecordHeader("f", 2, "f entry", migrations={1: lambda d: {"text": d["body"]}})
    assert header.check({"format": "f", "version": "1"}, {"body": "hi"}) == {"text": "hi"}
    assert header.check({"format": "f", "version": 2}, {"text": "hi"}) == {"text": "hi"}


def test_safetensors_form_of_a_run():
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "m": torch.tensor([1, 0], dtype=torch.uint8)}
    blob = pack_run(HEADER, tensors, {"loss": [float("nan"), 1.5]}, summary={"best": float("inf")})
    record, back = unpack_run(HEADER, blob)
    assert json.dumps(record) == '{"loss": [NaN, 1.5]}'  # NaN survives exactly
    assert set(back) == {"w", "m"} and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with pytest.raises(ValueError, match="not a sparsekit training-run entry"):
        unpack_run(RecordHeader("sparsekit-training-run", 1, "training-run entry"), blob)
