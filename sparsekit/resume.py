"""Resumable state of a long run (training, recovery): everything needed to continue it bit for bit.

A run that is stopped or interrupted half-way keeps, in the disk cache, the state of its last
checkpoint: the module's tensors (dense weights, mask buffers), the optimiser's state, the learning-rate
schedule, the random generators (the data order and torch's global one), the flip tracker and the record
so far. The same call run again loads it and continues from that checkpoint instead of from step 0;
the finished run's numbers are those of a run never interrupted.

A state is one safetensors entry (tensors, plus a JSON header under a ``RecordHeader``; no pickle),
keyed by ``state_key`` from the run's inputs (its config, the data or pruned model it starts from).
A state that cannot be read (damaged bytes, another format or version, tensors that do not fit the
run) is refused with ``ResumeError`` and the caller starts afresh; ``load_state`` reads such an entry
as missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from .cache import get_cache, make_key
from .flips import FlipTracker
from .store import RecordHeader, pack_run, unpack_run

__all__ = ["FORMAT_VERSION", "HEADER", "ResumeError", "ResumeState", "bytes_tensor", "capture", "clear_state",
           "load_state", "restore",
           "module_tensors", "optimizer_state", "restore_module", "restore_optimizer", "restore_rng", "rng_tensors",
           "save_state", "state_key", "tensor_bytes"]

FORMAT_VERSION = 1
"""Version of a resume state's entry; any other version is not read (the run starts afresh)."""
HEADER = RecordHeader("sparsekit-resume-state", FORMAT_VERSION, "resume state")
"""The header of a resume state's entry."""


class ResumeError(ValueError):
    """A resume state that does not fit the run asked for (other config, other tensors, damaged)."""


@dataclass
class ResumeState:
    """One checkpoint of a run: tensors by name, everything else as JSON.

    Attributes:
        kind: what the run is (``training``, ``recovery``); a state of another kind is refused.
        step: optimiser steps done at the checkpoint.
        meta: JSON-able values (optimiser hyper-parameters, the schedule, counters ...).
        tensors: name -> tensor; names are ``<part>/<name>`` (``model/...``, ``opt/...``, ``rng/...``).
    """

    kind: str
    step: int
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix/``, the prefix removed."""
        head = f"{prefix}/"
        return {k[len(head):]: v for k, v in self.tensors.items() if k.startswith(head)}

    def add(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Put ``tensors`` under ``prefix/`` (cloned, contiguous: the run goes on changing its own)."""
        for k, v in tensors.items():
            self.tensors[f"{prefix}/{k}"] = v.detach().clone().contiguous()

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor.

        Raises:
            ResumeError: it is not in the state.
        """
        if name not in self.tensors:
            raise ResumeError(f"the resume state has no tensor {name!r}")
        return self.tensors[name]

    def to_bytes(self) -> bytes:
        """The safetensors entry ``from_bytes`` reads back."""
        return pack_run(HEADER, self.tensors, {"kind": self.kind, "step": self.step, "meta": self.meta})

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ResumeState":
        """Inverse of ``to_bytes``.

        Raises:
            ResumeError: not a resume state, another version, or damaged bytes.
        """
        if not isinstance(blob, (bytes, bytearray)):
            raise ResumeError(f"a resume state is bytes, not {type(blob).__name__}")
        try:
            record, tensors = unpack_run(HEADER, bytes(blob))
            return cls(kind=str(record["kind"]), step=int(record["step"]), meta=dict(record["meta"]),
                       tensors=dict(tensors))
        except Exception as err:  # safetensors raises its own error type for damaged bytes
            raise ResumeError(f"unreadable resume state: {err}") from None


def state_key(kind: str, *parts: Any) -> str:
    """The cache key of a run's resume state: ``kind`` and the run's inputs (configs as JSON, digests)."""
    return make_key(f"{kind}-resume", FORMAT_VERSION, *parts)


def save_state(key: str, state: ResumeState) -> None:
    """Write a state (replacing the one before)."""
    get_cache().set(key, state.to_bytes())


def load_state(key: str, kind: str) -> ResumeState | None:
    """The state at ``key``, or None: missing, unreadable, another version, or of another kind."""
    raw = get_cache().get(key)
    if raw is None:
        return None
    try:
        state = ResumeState.from_bytes(raw)
    except ResumeError:
        return None
    return state if state.kind == kind else None


def clear_state(key: str) -> None:
    """Remove a state (the run finished, or is started afresh)."""
    get_cache().delete(key)


# ---------------------------------------------------------------------------------------------
# The parts of a state


def module_tensors(module: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """A module's state-dict tensors (parameters, parametrization originals, mask buffers).

    Args:
        module: the module.
        names: only these entries (None: all).
    """
    return {k: v for k, v in module.state_dict(keep_vars=False).items() if names is None or k in names}


@torch.no_grad()
def restore_module(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy saved tensors into a module's state-dict entries, in place.

    Raises:
        ResumeError: a name the module does not have, or another shape or dtype.
    """
    live = module.state_dict(keep_vars=True)
    for k, v in tensors.items():
        target = live.get(k)
        if target is None or target.shape != v.shape or target.dtype != v.dtype:
            raise ResumeError(f"the resume state's tensor {k!r} ({tuple(v.shape)}, {v.dtype}) does not fit the model")
    for k, v in tensors.items():
        live[k].data.copy_(v)


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's ``state_dict`` split into tensors (``<param index>/<name>``, copies) and JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = value.detach().clone()  # the optimiser updates its own in place
            else:
                plain.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"state": plain, "param_groups": groups}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Inverse of ``optimizer_state``: load it into an optimiser over the same parameters.

    Raises:
        ResumeError: it does not fit the optimiser (other parameter groups, other shapes).
    """
    state: dict[int, dict[str, Any]] = {}
    try:
        for name, value in tensors.items():
            pos, key = name.split("/", 1)
            state.setdefault(int(pos), {})[key] = value.clone()  # loading keeps the tensor itself
        for pos, plain in meta["state"].items():
            state.setdefault(int(pos), {}).update(plain)
        current = opt.state_dict()["param_groups"]
        groups = meta["param_groups"]
        if len(groups) != len(current) or any(len(g["params"]) != len(c["params"]) for g, c in zip(groups, current)):
            raise ResumeError("the resume state's optimiser has other parameter groups")
        # JSON has no tuples: give back the tuple the optimiser keeps (AdamW's betas).
        groups = [{k: tuple(v) if isinstance(c.get(k), tuple) else v for k, v in g.items()}
                  for g, c in zip(groups, current)]
        params = [p for g in opt.param_groups for p in g["params"]]
        for index, entry in state.items():
            for value in entry.values():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[index].shape:
                    raise ResumeError("the resume state's optimiser tensors do not fit the parameters")
        opt.load_state_dict({"state": state, "param_groups": groups})
    except ResumeError:
        raise
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise ResumeError(f"the resume state's optimiser does not fit: {err}") from None


def rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """torch's global CPU generator and a run's own (data order) as tensors: ``global``, ``data``."""
    return {"global": torch.get_rng_state(), "data": generator.get_state()}


def restore_rng(generator: torch.Generator, tensors: Mapping[str, torch.Tensor]) -> None:
    """Inverse of ``rng_tensors``.

    Raises:
        ResumeError: a state torch does not accept.
    """
    try:
        generator.set_state(tensors["data"])
        torch.set_rng_state(tensors["global"])
    except (KeyError, RuntimeError, TypeError) as err:
        raise ResumeError(f"the resume state's random generators cannot be restored: {err}") from None


def bytes_tensor(blob: bytes) -> torch.Tensor:
    """Bytes (a record's own safetensors form) as a uint8 tensor, to travel inside a state."""
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Inverse of ``bytes_tensor``."""
    return tensor.contiguous().numpy().tobytes()


# ---------------------------------------------------------------------------------------------
# A whole checkpoint of a loop


def capture(kind: str, step: int, *, config: Any, module: nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, tracker: FlipTracker,
            record: bytes, names: set[str] | None = None, extra: Mapping[str, Any] | None = None,
            extra_tensors: Mapping[str, torch.Tensor] | None = None) -> ResumeState:
    """A loop's checkpoint: the module's tensors, optimiser, schedule, generators, flip tracker, the record.

    Args:
        kind: the loop (``training``, ``recovery``).
        step: optimiser steps done.
        config: the run's settings as JSON (a state is only restored under the same).
        module: the model being trained (masks attached).
        opt, sched: its optimiser and learning-rate schedule.
        generator: the data-order generator (torch's global one is saved too).
        tracker: the flip tracker.
        record: the record so far, in its own safetensors form.
        names: only these state-dict entries of ``module`` (None: all).
        extra: more JSON (kept as ``meta["extra"]``).
        extra_tensors: more tensors (``extra/<name>``).
    """
    state = ResumeState(kind, step)
    state.add("model", module_tensors(module, names))
    opt_tensors, opt_meta = optimizer_state(opt)
    state.add("opt", opt_tensors)
    state.add("rng", rng_tensors(generator))
    flip_tensors, flip_meta = tracker.to_state()
    state.add("flips", flip_tensors)
    state.add("extra", extra_tensors or {})
    state.tensors["record"] = bytes_tensor(record)
    state.meta = {"config": config, "opt": opt_meta, "sched": sched.state_dict(), "flips": flip_meta,
                  "extra": dict(extra or {})}
    return state


def restore(state: ResumeState, kind: str, *, config: Any, module: nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
            ) -> tuple[bytes, FlipTracker, dict[str, Any]]:
    """Put a ``capture``d state back into freshly built loop objects; torch's global random state last
    (building the model drew from it).

    Returns:
        ``(record bytes, flip tracker, extra JSON)``; the extra tensors are ``state.part("extra")``.

    Raises:
        ResumeError: a state of another kind or config, or one that does not fit.
    """
    if state.kind != kind or state.meta.get("config") != config:
        raise ResumeError(f"the resume state belongs to another {kind} config")
    try:
        record = tensor_bytes(state.tensor("record"))
        tracker = FlipTracker.from_state(state.part("flips"), state.meta["flips"])
        sched_state = dict(state.meta["sched"])
        extra = dict(state.meta["extra"])
    except ResumeError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"unreadable resume state: {err}") from None
    restore_module(module, state.part("model"))
    restore_optimizer(opt, state.part("opt"), state.meta["opt"])
    sched.load_state_dict(sched_state)
    restore_rng(generator, state.part("rng"))
    return record, tracker, extra
