"""The disk cache under stress (issue 23, item 4): two processes on one folder, a read-only or full
folder, entries an older version wrote, and a process killed mid-write.

Subprocesses run a bounded number of iterations and are stopped by their own pid; no test asserts a
wall-clock time.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import diskcache
import pytest

from sparsekit import cache as cache_mod
from sparsekit.cache import CacheWarning, cache_problem, get_cache
from sparsekit.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def child(code: str, cache: Path, *args: str) -> subprocess.Popen:
    """A Python process on the cache folder ``cache`` running ``code`` (stdout piped)."""
    env = {**os.environ, "SPARSEKIT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """The process's output once it ends; killed by its pid if it runs past ``timeout``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"process {proc.pid} did not finish") from None
    assert proc.returncode == 0, err[-3000:]
    return out


def sealed(body: bytes) -> bytes:
    """A value that proves it is whole: the SHA-256 of its body, then the body."""
    return hashlib.sha256(body).digest() + body


def whole(value: bytes) -> bool:
    return hashlib.sha256(value[32:]).digest() == value[:32]


# Two servers on one folder ------------------------------------------------------------------------

HAMMER = r"""
import hashlib, json, os, random, sys
from sparsekit.cache import get_cache
name, rounds = sys.argv[1], int(sys.argv[2])
cache, rng = get_cache(), random.Random(name)
def sealed(body): return hashlib.sha256(body).digest() + body
torn = 0
for i in range(rounds):
    key = f"shared:{rng.randrange(6)}"
    # Small values live in sqlite, large ones (over diskcache's 32 kB) in their own file.
    size = rng.choice([10, 1000, 40_000, 300_000])
    cache.set(key, sealed(f"{name}:{i}:".encode() * (size // 8)))
    value = cache.get(f"shared:{rng.randrange(6)}")
    if value is not None and hashlib.sha256(value[32:]).digest() != value[:32]:
        torn += 1
    with cache.transact():  # a read-modify-write as the run store's index does it
        count = json.loads(cache.get("shared:counter") or "0")
        cache.set("shared:counter", json.dumps(count + 1))
print(json.dumps({"torn": torn, "problem": cache.problem}))
"""


def test_two_processes_on_one_folder_neither_corrupt_nor_crash(tmp_path):
    folder, rounds = tmp_path / "cache", 150
    procs = [child(HAMMER, folder, name, str(rounds)) for name in ("server-a", "server-b")]
    reports = [json.loads(finish(p).strip().splitlines()[-1]) for p in procs]
    assert reports == [{"torn": 0, "problem": ""}] * 2
    with diskcache.Cache(str(folder)) as reopened:
        # Every increment of both processes is there: no transaction lost the other's write.
        assert json.loads(reopened.get("shared:counter")) == 2 * rounds
        values = [reopened.get(f"shared:{i}") for i in range(6)]
        assert all(v is None or whole(v) for v in values) and any(v is not None for v in values)
        assert reopened.check() == []  # sqlite and the value files agree


# A read-only or full folder ------------------------------------------------------------------------

@dataclasses.dataclass
class Note:
    text: str
    name: str = ""
    run_id: str = ""
    status: str = "complete"
    owner: str = ""
    message: str = ""

    def summary(self) -> dict:
        return {"text": self.text, "name": self.name}


def note_store() -> RunStore:
    return RunStore("stress-note", what="note", index_key="stress-note-index",
                    to_bytes=lambda n: json.dumps(dataclasses.asdict(n)),
                    from_bytes=lambda raw: Note(**json.loads(raw)))


def unwritable(monkeypatch, error: BaseException) -> list[str]:
    """Make every write of diskcache raise ``error`` as the disk would; returns the keys it refused."""
    refused: list[str] = []

    def fail(self, key, *args, **kwargs):
        refused.append(key)
        raise error

    monkeypatch.setattr(diskcache.Cache, "set", fail)
    monkeypatch.setattr(diskcache.Cache, "delete", fail)
    return refused


def works_without_the_disk(caught: list) -> None:
    """The library keeps working: runs saved and read back, a digits model loaded, one warning."""
    store = note_store()
    ids = [store.save(Note(t)) for t in "abc"]
    assert store.load(ids[1]) == Note("b", run_id=ids[1])
    assert [e["text"] for e in store.runs()] == ["c", "b", "a"]
    assert store.delete(ids[0]) and [e["run_id"] for e in store.runs()] == ids[:0:-1]
    from sparsekit.models import load_model

    loaded = load_model("digits:mlp")  # the shipped weights; nothing needs the cache
    assert loaded.quality()
    assert cache_problem()
    said = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(said) == 1, [str(w.message) for w in said]
    assert "goes on without its disk cache" in str(said[0].message)


@pytest.mark.parametrize("error", [sqlite3.OperationalError("attempt to write a readonly database"),
                                   OSError(errno.EROFS, "Read-only file system"),
                                   OSError(errno.ENOSPC, "No space left on device")],
                         ids=["readonly-db", "erofs", "enospc"])
def test_read_only_or_full_folder_keeps_working_and_says_so_once(error, tmp_cache, monkeypatch):
    # An earlier run's entry is still read from the disk.
    get_cache().set("earlier", b"kept")
    with pytest.MonkeyPatch.context() as disk, warnings.catch_warnings(record=True) as caught:
        refused = unwritable(disk, error)
        warnings.simplefilter("always")
        assert get_cache().get("earlier") == b"kept"
        works_without_the_disk(caught)
    assert refused and str(error) in cache_problem()
    # The disk is tried again after RETRY_SECONDS; once a write works, the problem is gone.
    monkeypatch.setattr(cache_mod, "RETRY_SECONDS", 0.0)
    get_cache()._retry_at = 0.0
    get_cache().set("later", b"on disk")
    assert cache_problem() == ""
    with diskcache.Cache(str(tmp_cache)) as reopened:
        assert reopened.get("later") == b"on disk"


def test_chmod_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    with diskcache.Cache(str(folder)) as first:
        first.set("earlier", b"kept")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        probe = folder / "probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            pytest.skip("this user writes through chmod (root): the monkeypatched read-only tests cover it")
        except OSError:
            pass
        monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(folder))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            works_without_the_disk(caught)
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_cache_path_that_is_a_file(tmp_path, monkeypatch):
    # A folder that cannot be made at all (here a file stands where it should be): memory only.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(blocker / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        works_without_the_disk(caught)
    assert "cannot open the disk cache" in cache_problem()


def test_a_failed_commit_keeps_its_writes(tmp_cache, monkeypatch):
    store = note_store()
    first = store.save(Note("first"))

    real_transact = diskcache.Cache.transact

    class FailingCommit:
        def __init__(self, disk):
            self.inner = real_transact(disk)

        def __enter__(self):
            return self.inner.__enter__()

        def __exit__(self, *exc):
            self.inner.__exit__(*exc)
            if exc[0] is None:
                raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(diskcache.Cache, "transact", lambda self: FailingCommit(self))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        second = store.save(Note("second"))
    assert [e["run_id"] for e in store.runs()] == [second, first]
    assert "database or disk is full" in cache_problem()


def test_memory_fallback_is_bounded(tmp_path):
    cache = cache_mod.Cache(str(tmp_path / "x"), memory_bytes=1000)
    cache._disk, cache.problem, cache._retry_at = None, "test", float("inf")
    cache._open = lambda: None  # type: ignore[method-assign]
    for i in range(10):
        cache.set(f"k{i}", b"x" * 300)
    cache.set("huge", b"x" * 5000)
    assert [k for k in cache.iterkeys()] == ["k7", "k8", "k9"]
    assert cache.get("huge") is None and "k9" in cache and cache["k8"] == b"x" * 300


def test_the_app_says_once_that_it_runs_without_the_cache(tmp_path, monkeypatch):
    from devtools.apptest import page_app

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(blocker / "cache"))
    at = page_app("model")
    at.run()
    assert not at.exception
    for _ in range(2):  # on every run, one notice, in the sidebar
        notes = [e for e in [*at.sidebar.warning, *at.sidebar.info] if "disk cache" in e.value]
        assert len(notes) == 1 and "computed again" in notes[0].value
        at.run()


# Entries an older version wrote ------------------------------------------------------------------

def test_an_older_sensitivity_scan_is_computed_again(tmp_cache):
    from sparsekit.models import load_model
    from sparsekit.sensitivity import SensitivityConfig, _scan_key, cached_scan, sensitivity_scan

    loaded = load_model("digits:mlp")
    config = SensitivityConfig(sparsities=(0.5,), mode="proxy")
    fresh = sensitivity_scan(loaded, config, progress=False)
    key = _scan_key(loaded, config, fresh.metric)
    data = json.loads(get_cache().get(key))
    older = {
        "renamed field": json.dumps({**{k: v for k, v in data.items() if k != "proxy"}, "proxy_err": data["proxy"]}),
        "missing field": json.dumps({k: v for k, v in data.items() if k != "units"}),
        "older config": json.dumps({**data, "config": {**data["config"], "levels": [0.5]}}),
        "not json": "{half a record",
        "bytes": b"\x00\x01",
    }
    for what, entry in older.items():
        get_cache().set(key, entry)
        assert cached_scan(loaded, config) is None, what
        again = sensitivity_scan(loaded, config, progress=False)
        assert again.proxy == fresh.proxy and again.units == fresh.units, what
        assert cached_scan(loaded, config) is not None, what  # the recomputed scan replaced it


def test_older_records_of_every_reader_read_as_missing(tmp_cache):
    from sparsekit.compare import compare
    from sparsekit.config import SparsifyConfig
    from sparsekit.models import load_model
    from sparsekit.study.store import load_record, read_status, status_key

    # Compare rows (and a study's cells): a record with a field this version does not know.
    loaded = load_model("digits:mlp")
    configs = [SparsifyConfig(pattern="nm", n=2, m=4)]
    first = compare(loaded, configs, progress=False)
    keys = [k for k in get_cache().iterkeys() if isinstance(k, str) and load_record(k) is not None]
    assert keys
    for key in keys:
        get_cache().set(key, json.dumps({**json.loads(get_cache().get(key)), "row_v0": 1}))
        assert load_record(key) is None
    again = compare(loaded, configs, progress=False)
    assert [r.cached for r in again] == [False] and again[0].quality == first[0].quality
    # A study's status entry of an older version.
    get_cache().set(status_key("s1"), json.dumps({"study_id": "s1", "name": "x", "progress": 3}))
    assert read_status("s1") is None
    # A run store entry of a newer or older format is named, not raised.
    store = note_store()
    kept = store.save(Note("kept"))
    stale = store.save(Note("stale"))
    get_cache().set(store.key(stale), json.dumps({"txt": "v0 record"}))
    records, problems = store.load_all()
    assert records == [Note("kept", run_id=kept)] and len(problems) == 1 and stale in problems[0]
    # A value pickled by code that no longer exists (a class of a removed module).
    gone = types.ModuleType("sparsekit_v0_records")
    exec("class Row:\n    pass", gone.__dict__)
    sys.modules["sparsekit_v0_records"] = gone
    try:
        get_cache().set("pickled", gone.Row())
    finally:
        del sys.modules["sparsekit_v0_records"]
    assert get_cache().get("pickled") is None and cache_problem() == ""


# Killed mid-write -----------------------------------------------------------------------------------

WRITER = r"""
import hashlib, sys
from sparsekit.cache import get_cache
cache, size = get_cache(), int(sys.argv[1])
def sealed(body): return hashlib.sha256(body).digest() + body
cache.set("big", sealed(b"old" * (size // 3)))
cache.set("small", "old")
print("ready", flush=True)
for i in range(1000):  # bounded: killed long before the end
    cache.set("big", sealed(bytes([i % 251]) * size))
    cache.set("small", f"write {i}")
"""


def test_killed_mid_write_leaves_only_complete_entries(tmp_path):
    folder = tmp_path / "cache"
    size = 48 * 2**20
    proc = child(WRITER, folder, str(size))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.4)  # somewhere inside the loop of large writes
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    reader = r"""
import hashlib, json
from sparsekit.cache import get_cache
cache = get_cache()
big, small = cache.get("big"), cache.get("small")
cache.set("after", "usable")
print(json.dumps({"whole": big is None or hashlib.sha256(big[32:]).digest() == big[:32],
                  "size": None if big is None else len(big), "small": small, "after": cache.get("after"),
                  "problem": cache.problem}))
"""
    report = json.loads(finish(child(reader, folder)).strip().splitlines()[-1])
    assert report["whole"] and report["size"] in (None, 32 + size, 32 + 3 * (size // 3))
    assert report["small"] == "old" or report["small"].startswith("write ")
    assert report["after"] == "usable" and report["problem"] == ""
    with diskcache.Cache(str(folder)) as reopened:
        assert reopened.get("after") == "usable"
