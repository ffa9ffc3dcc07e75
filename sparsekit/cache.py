"""One disk cache for everything that should survive a restart.

Keys are built from JSON-serialised configs and content hashes, never from pickled tensors,
so that the same request always maps to the same entry.

The cache never stops the work: ``get_cache`` gives a ``Cache`` (diskcache's ``get``/``set``/``delete``/
``transact`` on one folder) that goes on without the disk when the folder cannot be opened or written
(read-only, full, not a folder). It then says so once (a ``CacheWarning`` through ``warnings``;
``cache_problem`` tells the app), keeps what it could not write in a bounded memory store for this
process only, and tries the disk again every ``RETRY_SECONDS``. An entry that cannot be decoded (one
an older version wrote) reads as missing; ``read_entry`` does the same for an entry its reader refuses.
diskcache itself is safe across processes and writes an entry in one transaction, its large values to
a file first: a process killed mid-write leaves the old value (or nothing), never half of one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import diskcache
import torch
from torch import nn

T = TypeVar("T")
_CACHES: dict[str, "Cache"] = {}
_CACHES_LOCK = threading.Lock()
_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
_MISSING = object()

DISK_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
"""What a disk that cannot be used raises: read-only or full (``OSError``, sqlite's ``attempt to write a
readonly database``, ``database or disk is full``), or a lock held past diskcache's timeout."""
STALE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, ImportError, EOFError)
"""What decoding an entry of another version raises (a pickle of a class that changed, other fields)."""
RETRY_SECONDS = 300.0
"""After a failed read or write, the disk is left alone this long, then tried again."""
MEMORY_BYTES = 256 * 2**20
"""What a ``Cache`` keeps in memory while the disk is unusable (least recently used dropped first)."""


class CacheWarning(UserWarning):
    """The disk cache is not usable: sparsekit goes on without it (results are computed again after a restart)."""


def cache_dir() -> Path:
    """The cache location: ``$SPARSEKIT_CACHE_DIR`` or ``~/.cache/sparsekit``."""
    env = os.environ.get("SPARSEKIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsekit"


class Cache:
    """The disk cache of one folder, as sparsekit uses it; goes on in memory when the disk fails.

    The same calls as ``diskcache.Cache`` for what sparsekit does (``get``, ``set``, ``in``, ``[]``,
    ``delete``, ``transact``, ``iterkeys``). No call raises for a disk that is read-only, full or gone:
    a write that fails is kept in memory (at most ``memory_bytes``), a read that fails reads as missing.

    Args:
        directory: the cache folder (created when missing).
        size_limit: diskcache's size limit (bytes) of the folder.
        memory_bytes: what is kept in memory while the disk cannot be written.
    """

    def __init__(self, directory: str, *, size_limit: int = 4 * 2**30, memory_bytes: int = MEMORY_BYTES) -> None:
        self.directory, self.size_limit, self.memory_bytes = directory, size_limit, memory_bytes
        self.problem = ""
        """Why the disk is not used right now ('' while it is)."""
        self._disk: diskcache.Cache | None = None
        self._memory: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.Lock()  # the memory store and the state
        self._txn_lock = threading.RLock()  # one transaction per process at a time
        self._txn_writes: list[tuple[str, Any]] = []  # what the open transaction wrote (its thread's)
        self._txn_owner: int | None = None
        self._retry_at = 0.0
        self._warned = False
        self._open()

    # -- the disk, and what happens when it fails --------------------------------------------------

    def _open(self) -> diskcache.Cache | None:
        if self._disk is None and time.monotonic() >= self._retry_at:
            try:
                os.makedirs(self.directory, exist_ok=True)
                self._disk = diskcache.Cache(self.directory, size_limit=self.size_limit)
            except DISK_ERRORS as err:
                self._failed("open", err)
        return self._disk

    def _writable(self) -> diskcache.Cache | None:
        """The disk when a write may be tried (not while it is left alone after a failure)."""
        disk = self._open()
        return disk if not self.problem or time.monotonic() >= self._retry_at else None

    def _failed(self, action: str, err: BaseException) -> None:
        with self._lock:
            self.problem = f"cannot {action} the disk cache at {self.directory} ({type(err).__name__}: {err})"
            self._retry_at = time.monotonic() + RETRY_SECONDS
            warn, self._warned = not self._warned, True
        if warn:
            warnings.warn(f"sparsekit goes on without its disk cache: {self.problem}. Results are kept in memory "
                          "for this process only and computed again after a restart.", CacheWarning, stacklevel=4)

    def _worked(self) -> None:
        if self.problem:
            with self._lock:
                self.problem, self._warned = "", False

    def _remember(self, key: str, value: Any) -> None:
        size = len(value) if isinstance(value, (bytes, str)) else 1024
        with self._lock:
            self._forget_locked(key)
            if size > self.memory_bytes:
                return  # too large to keep: computed again when asked for
            self._memory[key] = (value, size)
            self._memory_used += size
            while self._memory_used > self.memory_bytes:
                _, (_, old) = self._memory.popitem(last=False)
                self._memory_used -= old

    def _forget_locked(self, key: str) -> None:
        item = self._memory.pop(key, None)
        if item is not None:
            self._memory_used -= item[1]

    # -- diskcache's calls ---------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` (missing, undecodable, or the disk unreadable)."""
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key][0]
        disk = self._open()
        if disk is None:
            return default
        try:
            return disk.get(key, default)
        except DISK_ERRORS as err:
            self._failed("read", err)
        except STALE_ERRORS:
            pass  # a value pickled by code that changed since: missing
        return default

    def set(self, key: str, value: Any) -> bool:
        """Store ``value`` at ``key`` (in memory for this process when the disk cannot be written)."""
        disk = self._writable()
        if disk is not None:
            try:
                disk.set(key, value)
            except DISK_ERRORS as err:
                self._failed("write", err)
            else:
                self._worked()
                with self._lock:
                    self._forget_locked(key)
                    if self._txn_owner == threading.get_ident():
                        self._txn_writes.append((key, value))
                return True
        self._remember(key, value)
        return True

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        with self._lock:
            found = key in self._memory
            self._forget_locked(key)
        disk = self._writable()
        if disk is not None:
            try:
                found = bool(disk.delete(key)) or found
            except DISK_ERRORS as err:
                self._failed("write", err)
        return found

    def __contains__(self, key: object) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        disk = self._open()
        try:
            return disk is not None and key in disk
        except DISK_ERRORS as err:
            self._failed("read", err)
            return False

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def iterkeys(self) -> Iterator[Any]:
        """Every key: those kept in memory, then the disk's."""
        with self._lock:
            keys = list(self._memory)
        yield from keys
        disk = self._open()
        if disk is not None:
            try:
                yield from (k for k in disk.iterkeys() if k not in keys)
            except DISK_ERRORS as err:
                self._failed("read", err)

    @contextmanager
    def transact(self) -> Iterator[None]:
        """A read-modify-write no other thread or process interleaves with (diskcache's transaction;
        with the disk unusable, this process's threads only). Writes of a transaction whose commit
        fails are kept in memory."""
        with self._txn_lock:
            disk = self._writable() if self._txn_owner is None else None  # a nested one joins the outer
            txn = None
            if disk is not None:
                try:
                    txn = disk.transact()
                    txn.__enter__()
                except DISK_ERRORS as err:
                    txn = None
                    self._failed("write", err)
            if txn is None:
                yield
                return
            self._txn_owner, self._txn_writes = threading.get_ident(), []
            try:
                yield
            except BaseException as exc:
                try:
                    txn.__exit__(type(exc), exc, exc.__traceback__)  # rolled back
                except DISK_ERRORS:
                    pass
                raise
            else:
                try:
                    txn.__exit__(None, None, None)
                except DISK_ERRORS as err:
                    self._failed("write", err)
                    for key, value in self._txn_writes:
                        self._remember(key, value)
            finally:
                self._txn_owner, self._txn_writes = None, []

    def close(self) -> None:
        """Close the disk cache's files (it reopens on the next call)."""
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()


def get_cache() -> Cache:
    """The process-wide cache for the current ``cache_dir()`` (re-read on every call so tests can
    point ``SPARSEKIT_CACHE_DIR`` at a temporary folder)."""
    path = str(cache_dir())
    with _CACHES_LOCK:
        cache = _CACHES.get(path)
        if cache is None:
            cache = _CACHES[path] = Cache(path)
    return cache


def cache_problem() -> str:
    """Why the disk cache is not used right now ('' when it is): for the app to say so."""
    return get_cache().problem


def read_entry(key: str, reader: Callable[[Any], T]) -> T | None:
    """The cache entry at ``key`` as ``reader`` reads it, or None: missing, or refused by ``reader`` (an
    entry an older version wrote, with other fields or another format, is computed again).

    Args:
        key: the entry's key.
        reader: text or bytes -> the record; raises for an entry it cannot read.
    """
    raw = get_cache().get(key)
    if raw is None:
        return None
    try:
        return reader(raw)
    except STALE_ERRORS:
        return None


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__dc__": type(obj).__name__, **fields}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, bytes):
        return {"sha256": hashlib.sha256(obj).hexdigest()}
    raise TypeError(f"cannot build a cache key from {type(obj).__name__}")


def make_key(kind: str, *parts: Any) -> str:
    """A stable cache key: ``kind`` plus the SHA-256 of the JSON form of ``parts``."""
    payload = json.dumps(_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return f"{kind}:{hashlib.sha256(payload.encode()).hexdigest()}"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the raw bytes, dtypes and shapes of tensors (for content-addressed keys)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def calibration_digest(calibration: torch.Tensor | dict[str, torch.Tensor] | None) -> str:
    """SHA-256 of a calibration batch (a dict of tensors in key order, or one tensor); '' for none: the part
    of a cache key that names the calibration data."""
    if calibration is None:
        return ""
    if isinstance(calibration, dict):
        return tensor_digest(*(calibration[k] for k in sorted(calibration)))
    return tensor_digest(calibration)


def model_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, dtypes and bytes); remembered per module."""
    known = _FINGERPRINTS.get(module)
    if known is None:
        state = module.state_dict()
        names = json.dumps(sorted(state), separators=(",", ":"))
        known = make_key("weights", names, tensor_digest(*(state[k] for k in sorted(state))))
        _FINGERPRINTS[module] = known
    return known
