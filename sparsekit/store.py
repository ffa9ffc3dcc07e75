"""One run store for every kind of saved run (training runs, benchmark runs).

A kind's runs live in the one disk cache (``cache.get_cache``): each run is one entry under a
kind-prefixed key, and one index entry holds a JSON list of small summaries, so listing the runs
never decodes them. The entry is written before the index and the index is rewritten inside a cache
transaction, so a reader never sees a listed run without its entry, and two processes saving at the
same time cannot drop each other's summary. An index that cannot be read is rebuilt from the
entries. Everything in the index is JSON text (NaN/inf written as null): nothing needs unpickling.

A run being written by a live process carries that process's ``process_token``; ``orphaned`` tells
a run whose process ended without saving a final status (server killed, crash).
"""
from __future__ import annotations

import json
import math
import os
import socket
import uuid
from typing import Any, Callable

from .cache import get_cache, make_key


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None (JSON has neither), tuples as lists.

    Args:
        obj: JSON-able data (dicts, lists, tuples, numbers, strings, None).

    Returns:
        The same data, safe for ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def finite_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``finite_json(obj)``: strict JSON that any reader, not only Python, parses.

    Args:
        obj: JSON-able data.
        **kwargs: passed to ``json.dumps`` (``indent``, ``default`` ...).

    Returns:
        The JSON text.
    """
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# Liveness of the process that owns a run


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot), '' when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after "(comm)"
    except (OSError, IndexError):
        return ""


def process_token(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one); the start time guards against pid reuse.

    Args:
        pid: the process id (default: this process).

    Returns:
        The token ``owner_alive`` reads.
    """
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def owner_alive(token: str) -> bool | None:
    """Whether the process named by ``process_token`` still runs.

    Args:
        token: a ``process_token``.

    Returns:
        True/False, or None when this machine cannot tell (another host shares the cache, or the
        token is malformed).
    """
    try:
        host, pid_text, start = token.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname() or pid <= 0:
        return None
    if start:
        return _process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned(status: str, owner: str) -> bool:
    """Whether a run still marked ``running`` belongs to a process known to have ended.

    Args:
        status: the run's saved status.
        owner: the ``process_token`` saved with it ('' when none).

    Returns:
        True only when this machine can tell the owner is gone.
    """
    return status == "running" and bool(owner) and owner_alive(owner) is False


# ---------------------------------------------------------------------------------------------
# The store


class RunStore:
    """The saved runs of one kind: an entry per run plus an index of summaries, in the disk cache.

    Args:
        kind: prefix of the entries' keys (``training-run``, ``bench-run``); also the prefix the
            index rebuild scans for.
        index_key: where the index lives.
        summarize: entry value -> summary dict, used to rebuild the index; it raises for an entry
            it cannot read, which is then left out. With hashed ids the summary must hold the
            ``run_id`` (a hashed key does not reveal it).
        hash_ids: key an entry by ``make_key(kind, run_id)``, as every other cache key; False keys
            it by ``kind:run_id`` for ids that are content digests already.
    """

    def __init__(self, kind: str, *, index_key: str, summarize: Callable[[Any], dict],
                 hash_ids: bool = True) -> None:
        self.kind = kind
        self.index_key = index_key
        self.summarize = summarize
        self.hash_ids = hash_ids

    def key(self, run_id: str) -> str:
        """The cache key of a run's entry.

        Args:
            run_id: the run's id.

        Returns:
            ``kind:...``.
        """
        return make_key(self.kind, run_id) if self.hash_ids else f"{self.kind}:{run_id}"

    def put(self, run_id: str, value: Any, summary: dict) -> None:
        """Write a run: its entry, then its summary into the index (a re-saved run keeps its place).

        Args:
            run_id: the run's id.
            value: the entry (bytes or text).
            summary: JSON-able description kept in the index; ``run_id`` is added.
        """
        cache = get_cache()
        cache.set(self.key(run_id), value)
        summary = finite_json({**summary, "run_id": run_id})
        with cache.transact():
            entries = self._read_index(cache)
            pos = next((i for i, e in enumerate(entries) if e["run_id"] == run_id), None)
            if pos is None:
                entries.append(summary)
            else:
                entries[pos] = summary
            cache.set(self.index_key, finite_dumps(entries))

    def get(self, run_id: str) -> Any:
        """A run's entry as stored.

        Args:
            run_id: the run's id.

        Returns:
            The value ``put`` wrote, or None when there is no such entry.
        """
        return get_cache().get(self.key(run_id))

    def save_record(self, record: Any, to_bytes: Callable[[Any], bytes]) -> str:
        """Store a run record (its entry, then the index), giving it an id if it has none.

        Args:
            record: a record with ``run_id`` and ``summary()``; ``run_id`` is set when empty.
            to_bytes: its serialiser.

        Returns:
            The run id.
        """
        if not record.run_id:
            record.run_id = uuid.uuid4().hex[:12]
        # A checkpoint or a rename keeps the run's place in the list.
        self.put(record.run_id, to_bytes(record), record.summary())
        return record.run_id

    def load_record(self, run_id: str, from_bytes: Callable[[bytes], Any], what: str) -> Any:
        """A stored run record, exactly as saved.

        Args:
            run_id: its id.
            from_bytes: its reader.
            what: what it is, for messages (``training run``).

        Returns:
            The record.

        Raises:
            KeyError: no such run. ValueError: the entry is not readable.
        """
        blob = self.get(run_id)
        if blob is None:
            raise KeyError(f"no saved {what} with id {run_id!r}")
        if not isinstance(blob, bytes):
            raise ValueError(f"the cache entry of run {run_id!r} is not a {what}")
        try:
            return from_bytes(blob)
        except ValueError:
            raise
        except Exception as err:  # safetensors raises its own error type for damaged bytes
            raise ValueError(f"the cache entry of {what} {run_id!r} is damaged: {err}") from None

    def summaries(self) -> list[dict]:
        """The index, in the order the runs were first saved.

        Returns:
            One summary dict (with ``run_id``) per run whose entry still exists.
        """
        cache = get_cache()
        return [e for e in self._read_index(cache) if self.key(e["run_id"]) in cache]

    def delete(self, run_id: str) -> bool:
        """Remove a run: index first, so no listed run ever lacks its entry.

        Args:
            run_id: the run's id.

        Returns:
            Whether the run was there (in the index or as an entry).
        """
        cache = get_cache()
        key = self.key(run_id)
        with cache.transact():
            entries = self._read_index(cache)
            kept = [e for e in entries if e["run_id"] != run_id]
            found = len(kept) < len(entries) or key in cache
            if found:
                cache.set(self.index_key, finite_dumps(kept))
        cache.delete(key)
        return found

    def _read_index(self, cache) -> list[dict]:
        raw = cache.get(self.index_key)
        if raw is None:
            return []
        try:
            items = json.loads(raw)
            if not isinstance(items, list):
                raise ValueError
        except (ValueError, TypeError):
            return self._rebuild(cache)
        entries = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("run_id"), str):
                entries.append(item)
            elif isinstance(item, str):
                # An entry's key: the index format of older benchmark histories; the summary comes from the entry.
                summary = self._summary_at(cache, item)
                if summary is not None:
                    entries.append(summary)
        return entries

    def _rebuild(self, cache) -> list[dict]:
        # Never expected (index writes are atomic), but a damaged index must not hide the runs.
        found = (self._summary_at(cache, key) for key in list(cache.iterkeys()) if isinstance(key, str))
        entries = sorted((e for e in found if e is not None), key=lambda e: e.get("created") or 0.0)
        cache.set(self.index_key, finite_dumps(entries))
        return entries

    def _summary_at(self, cache, key: str) -> dict | None:
        """The index summary of the entry at ``key``; None for another kind's key, or a missing or
        unreadable entry."""
        prefix = f"{self.kind}:"
        if not key.startswith(prefix):
            return None
        value = cache.get(key)
        if value is None:
            return None
        try:
            summary = self.summarize(value)
        except Exception:
            return None
        run_id = summary.get("run_id") if self.hash_ids else key[len(prefix):]
        return finite_json({**summary, "run_id": run_id}) if isinstance(run_id, str) else None
