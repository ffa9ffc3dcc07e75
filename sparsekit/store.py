"""One run store for every kind of saved run (training, recovery and benchmark runs).

``RunStore`` is the one contract: ``save``, ``load``, ``runs`` (the index, newest first), ``load_all`` (damaged
entries named and skipped), ``rename`` and ``delete``, the same for every kind; ``run_store(kind)``
finds a kind's store and refuses an unknown kind. Every entry carries a ``RecordHeader`` (its format
and version); runs with tensors are safetensors bytes (``pack_run``/``unpack_run``/``unpack_masked_run``).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, Protocol, TypeVar, cast

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .cache import Cache, get_cache, make_key
from .models.weights import safetensors_header
from .serial import Migration, check_version
from .topology import MaskHistory, read_run_tensors


class StoredRun(Protocol):
    """What every record a ``RunStore`` keeps has: a name and the summary its index lists."""

    name: str

    def summary(self) -> dict[str, Any]: ...


class OwnedRun(StoredRun, Protocol):
    """A record with its own id and owning process (training, recovery): what ``save`` reads without an id."""

    run_id: str
    status: str
    owner: str
    message: str


R = TypeVar("R", bound=StoredRun)
_STORES: dict[str, RunStore[Any]] = {}


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
    """``json.dumps`` of ``finite_json(obj)``: strict JSON that any reader, not only Python, parses
    (``kwargs`` go to ``json.dumps``: ``indent``, ``default`` ...)."""
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
# The record header and the safetensors form of a run with tensors


@dataclass(frozen=True)
class RecordHeader:
    """What every stored run says about itself: its format (which kind of record) and the version of
    the code that wrote it. An entry of another format is refused; its version follows
    ``sparsekit.serial.check_version`` (a newer one is refused, an older one migrates or is refused).

    Attributes:
        format: the format's name (``sparsekit-training-run``).
        version: the version this code writes.
        what: the record in messages (``training-run entry``).
        format_key: where the format's name is kept (``schema`` in benchmark files).
        version_key: where the version is kept (``schema_version`` in benchmark files).
        migrations: version v -> the step from the record dict of v to that of v + 1.
    """

    format: str
    version: int
    what: str
    format_key: str = "format"
    version_key: str = "version"
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        """The header as safetensors metadata (string values)."""
        return {self.format_key: self.format, self.version_key: str(self.version)}

    def check(self, meta: Mapping[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Refuse anything but this format at a version this code reads.

        Args:
            meta: where the header sits (safetensors metadata, or the record's own JSON object).
            data: the record, migrated when it is older (None: only the check).

        Returns:
            The record at ``version`` (an empty dict when ``data`` is None).

        Raises:
            ValueError: another format, or a version this code does not read.
        """
        if meta.get(self.format_key) != self.format:
            raise ValueError(f'not a sparsekit {self.what} (missing "{self.format_key}": "{self.format}")')
        found = meta.get(self.version_key)
        try:
            return check_version(found, self.version, self.what, migrations=self.migrations, data=data)
        except ValueError as err:
            raise ValueError(f"unsupported {self.version_key} {found!r}: {err}") from None


def pack_run(header: RecordHeader, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any], *,
             summary: Mapping[str, Any] | None = None) -> bytes:
    """A run as safetensors bytes: its tensors, the header and the record as JSON metadata (no pickle).

    Args:
        header: the record's header.
        tensors: weights, packed masks ...
        record: everything else, JSON-able (Python's json writes NaN and reads it back, so a diverged
            loss survives exactly).
        summary: the index summary, kept on its own so rebuilding the index decodes no tensor.

    Returns:
        The bytes ``unpack_run`` reads.
    """
    meta = {**header.fields(), "record": json.dumps(record)}
    if summary is not None:
        meta["summary"] = finite_dumps(summary)
    return save_tensors(dict(tensors), metadata=meta)


def run_meta(header: RecordHeader, blob: bytes) -> dict[str, str]:
    """The checked metadata of ``pack_run``'s bytes, read from the header only (no tensor decoded).

    Raises:
        ValueError: not safetensors, another format, or a version this code does not read.
    """
    meta = safetensors_header(blob).get("__metadata__") or {}
    header.check(meta)
    return meta


def unpack_run(header: RecordHeader, blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Inverse of ``pack_run``.

    Returns:
        ``(record, tensors)``, the record migrated to ``header.version``.
    """
    meta = run_meta(header, blob)
    record = header.check(meta, json.loads(meta["record"]))
    return record, load_tensors(blob)


def unpack_masked_run(header: RecordHeader, blob: bytes, *, epochs_key: str | None = None,
                      ) -> tuple[dict[str, Any], MaskHistory, dict[str, torch.Tensor]]:
    """``unpack_run`` of a run with mask snapshots (tensors of ``topology.run_tensors``, ``shapes`` and
    ``snapshot_steps`` in the record): ``(record, history, weights)``, the history's masks read back.
    ``epochs_key`` names the record field of the snapshots' epochs (None: the steps, as floats)."""
    info, tensors = unpack_run(header, blob)
    steps = list(info["snapshot_steps"])
    epochs = list(info[epochs_key]) if epochs_key is not None else [float(s) for s in steps]
    history = MaskHistory({k: tuple(v) for k, v in info["shapes"].items()}, steps=steps, epochs=epochs)
    return info, history, read_run_tensors(tensors, history)


# ---------------------------------------------------------------------------------------------
# The store


class RunStore(Generic[R]):
    """The one store contract of saved runs (training, recovery, benchmark): an entry per run plus an
    index of summaries, in the disk cache, under one kind.

    ``save``/``load``/``runs``/``load_all``/``rename``/``delete`` are the same for every kind; a kind
    brings its serialiser, its reader and what a run whose process died looks like. A record has
    ``run_id``, ``name``, ``status``, ``owner`` and ``message`` attributes and a ``summary()`` (a
    benchmark run, which has no id of its own, is saved under its content digest).

    Args:
        kind: prefix of the entries' keys (``training-run``); one store per kind (``run_store``).
        what: the record in messages (``training run``).
        index_key: where the index lives.
        to_bytes: record -> the entry (bytes or text).
        from_bytes: entry -> record; raises ``ValueError`` for an entry it cannot read.
        summarize: entry -> summary dict, used to rebuild the index (default: the record's
            ``summary()``). With hashed ids the summary must hold the ``run_id``.
        hash_ids: key an entry by ``make_key(kind, run_id)``; False: by ``kind:run_id`` (content digests).
        orphan_record: the message of a loaded run whose process ended while it ran (None: not checked).
        orphan_summary: the same for an index summary.
    """

    # ``from_bytes`` and ``summarize`` take Any: an entry is the bytes or the text its kind's ``to_bytes`` wrote.
    def __init__(self, kind: str, *, what: str, index_key: str, to_bytes: Callable[[R], bytes | str],
                 from_bytes: Callable[[Any], R], summarize: Callable[[Any], dict[str, Any]] | None = None,
                 hash_ids: bool = True, orphan_record: Callable[[R], str] | None = None,
                 orphan_summary: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.kind, self.what, self.index_key, self.hash_ids = kind, what, index_key, hash_ids
        self.to_bytes, self.from_bytes = to_bytes, from_bytes
        self.summarize: Callable[[Any], dict[str, Any]] = summarize or (lambda value: from_bytes(value).summary())
        self.orphan_record, self.orphan_summary = orphan_record, orphan_summary
        _STORES[kind] = self

    def key(self, run_id: str) -> str:
        """The cache key of a run's entry (``kind:...``)."""
        return make_key(self.kind, run_id) if self.hash_ids else f"{self.kind}:{run_id}"

    def save(self, record: R, run_id: str | None = None) -> str:
        """Write a run: its entry, then its summary into the index (a re-saved run keeps its place).

        Args:
            record: the run; its ``run_id`` is set when empty and ``run_id`` is not given.
            run_id: the id to save it under (default: the record's own).

        Returns:
            The run id.
        """
        if run_id is None:
            owned = cast(OwnedRun, record)  # saved without an id: a record with one of its own
            if not owned.run_id:
                owned.run_id = uuid.uuid4().hex[:12]
            run_id = owned.run_id
        cache = get_cache()
        cache.set(self.key(run_id), self.to_bytes(record))
        summary = finite_json({**record.summary(), "run_id": run_id})
        with cache.transact():
            entries = self._read_index(cache)
            pos = next((i for i, e in enumerate(entries) if e["run_id"] == run_id), None)
            if pos is None:
                entries.append(summary)
            else:
                entries[pos] = summary
            cache.set(self.index_key, finite_dumps(entries))
        return run_id

    def load(self, run_id: str) -> R:
        """A saved run, exactly as saved (one whose process died while it ran reads as stopped).

        Raises:
            KeyError: no such run. ValueError: the entry is not readable (the message names the run).
        """
        blob = get_cache().get(self.key(run_id))
        if blob is None:
            raise KeyError(f"no saved {self.what} with id {run_id!r}")
        if not isinstance(blob, (bytes, str)):
            raise ValueError(f"the cache entry of run {run_id!r} is not a {self.what}")
        try:
            record = self.from_bytes(blob)
        except ValueError:
            raise
        except Exception as err:  # safetensors raises its own error type for damaged bytes
            raise ValueError(f"the cache entry of {self.what} {run_id!r} is damaged: {err}") from None
        if self.orphan_record is not None:  # a kind whose records have an owner
            owned = cast(OwnedRun, record)
            if orphaned(owned.status, owned.owner):
                owned.status = "stopped"
                owned.message = self.orphan_record(record)
        return record

    def runs(self, *, oldest_first: bool = False) -> list[dict[str, Any]]:
        """The index: one summary dict (with ``run_id``) per run whose entry exists, newest first.

        Args:
            oldest_first: in the order the runs were first saved instead.
        """
        cache = get_cache()
        out = []
        for entry in self._read_index(cache):
            if self.key(entry["run_id"]) not in cache:
                continue
            if self.orphan_summary is not None and orphaned(entry.get("status", ""), entry.get("owner", "")):
                entry = {**entry, "status": "stopped", "message": self.orphan_summary(entry)}
            out.append(entry)
        return out if oldest_first else out[::-1]

    def load_all(self) -> tuple[list[R], list[str]]:
        """Every listed run, newest first; a run that cannot be read is skipped and named.

        Returns:
            ``(records, problems)``: a problem is a message naming the run's id.
        """
        records: list[R] = []
        problems: list[str] = []
        for entry in self.runs():
            try:
                records.append(self.load(entry["run_id"]))
            except KeyError:
                continue  # deleted since it was listed
            except ValueError as err:
                problems.append(f"{self.what} {entry['run_id']!r} cannot be read: {err}")
        return records, problems

    def rename(self, run_id: str, name: str) -> R:
        """Give a saved run a new name (at most 80 characters; empty: back to its default label)."""
        name = name.strip()
        if len(name) > 80:
            raise ValueError(f"a run name has at most 80 characters, got {len(name)}")
        record = self.load(run_id)
        record.name = name
        self.save(record)
        return record

    def delete(self, run_id: str) -> bool:
        """Remove a run: index first, so no listed run ever lacks its entry.

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

    def remove(self, run_id: str) -> None:
        """``delete``, raising ``KeyError`` for an unknown id."""
        if not self.delete(run_id):
            raise KeyError(f"no saved {self.what} with id {run_id!r}")

    def _read_index(self, cache: Cache) -> list[dict[str, Any]]:
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

    def _rebuild(self, cache: Cache) -> list[dict[str, Any]]:
        # Never expected (index writes are atomic), but a damaged index must not hide the runs.
        found = (self._summary_at(cache, key) for key in list(cache.iterkeys()) if isinstance(key, str))
        entries = sorted((e for e in found if e is not None), key=lambda e: e.get("created") or 0.0)
        cache.set(self.index_key, finite_dumps(entries))
        return entries

    def _summary_at(self, cache: Cache, key: str) -> dict[str, Any] | None:
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


def run_store(kind: str) -> RunStore[Any]:
    """The store of a kind of run.

    Args:
        kind: ``training-run``, ``recovery-run``, ``bench-run`` (registered when their package is imported).

    Returns:
        The ``RunStore``.

    Raises:
        ValueError: a kind no store was made for.
    """
    store = _STORES.get(kind)
    if store is None:
        raise ValueError(f"unknown run kind {kind!r}; known kinds: {', '.join(sorted(_STORES)) or 'none'}")
    return store
