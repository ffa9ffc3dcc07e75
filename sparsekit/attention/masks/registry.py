"""The registry: every mask family by name, with explicit, bounded parameters.

A factory registers itself with ``@pattern(title, summary, **declarations)``. Parameter names, their
order and their defaults come from the factory's signature; ``arg`` declares, next to the factory,
what a signature cannot say: help text, bounds, the choices of a text parameter and how large a
value still fits a sequence. Parameters listed in ``context`` are not spec parameters:
``PatternInfo.build`` fills them from a ``PatternContext`` (the lengths, whether the model is a
decoder, the captured attention or Q/K).

The decorator hands back the factory wrapped so that a direct call checks its integer and choice
parameters against the same declared bounds as ``PatternSpec`` and the app: one declaration, one
set of error messages.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping

from torch import Tensor

from .core import MAX_PARAM, MaskMod, _int


@dataclass(frozen=True)
class PatternContext:
    """What a pattern may be built from: the lengths, and for data-dependent patterns the
    attention or Q/K of the heads it will be applied to."""

    q_len: int
    """Number of queries."""
    kv_len: int
    """Number of keys."""
    causal: bool = False
    """The model is a decoder (its causal mask applies on top of any pattern)."""
    probs: Tensor | None = None
    """Dense attention ``[heads, q_len, kv_len]`` (needed by vertical-slash)."""
    query: Tensor | None = None
    """Queries ``[heads, q_len, d]`` (needed by block top-k)."""
    key: Tensor | None = None
    """Keys ``[heads, kv_len, d]`` (needed by block top-k)."""


# Context fields only a capture can provide, and the need ("probs" / "qk") each one stands for.
_DATA_NEEDS = {"probs": "probs", "query": "qk", "key": "qk"}
_CONTEXT_FIELDS = frozenset(f.name for f in fields(PatternContext))

Limit = Callable[[int, int, Mapping[str, Any]], int]
"""``limit(q_len, kv_len, params)``: the largest value that fits a sequence."""


@dataclass(frozen=True)
class Fit:
    """How large a length-like parameter may be for a sequence (checked by
    ``PatternSpec.validate``, so that a window longer than the input gets a clear message)."""

    limit: Limit
    """The largest value that fits ``q_len`` queries and ``kv_len`` keys."""
    unit: str = "tokens"
    """What the limit counts, as the message says it."""
    measure: Callable[[Any], int] | None = None
    """The number compared with the limit, from the value (default: the value itself)."""
    label: str = ""
    """What the message calls the number (default: the parameter name)."""

    def check(self, name: str, value: Any, q_len: int, kv_len: int, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the largest value that fits when ``value`` does not."""
        number = self.measure(value) if self.measure else value
        limit = self.limit(q_len, kv_len, params)
        if number > limit:
            raise ValueError(f"{self.label or name} {number} is larger than the sequence ({q_len} tokens): "
                             f"use at most {limit} {self.unit} for this input")


DISTANCE = Fit(lambda q, kv, p: max(q, kv) - 1)
"""A distance ``|i - j|``: at most the sequence length minus one."""
SPAN = Fit(lambda q, kv, p: max(q, kv))
"""A number of consecutive tokens: at most the sequence length."""
KEYS = Fit(lambda q, kv, p: kv)
"""A number of key positions: at most the keys."""
BLOCKS = Fit(lambda q, kv, p: math.ceil(max(q, kv) / p["block"]), "blocks")
"""A number of blocks of ``block`` tokens: at most the blocks in the sequence."""


@dataclass(frozen=True)
class Param:
    """One pattern parameter."""

    name: str
    default: int | bool | str
    help: str
    minimum: int = 0
    """Smallest value (integers)."""
    maximum: int = MAX_PARAM
    """Largest value (integers)."""
    choices: tuple[str, ...] = ()
    """Allowed values of a text choice."""
    fits: Fit | None = None
    """How large the value may be for a given sequence (None: any length)."""

    @property
    def kind(self) -> str:
        """``"bool"``, ``"int"``, ``"choice"`` or ``"text"`` (from the default's type)."""
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        return "choice" if self.choices else "text"

    def check(self, value: Any) -> int | bool | str:
        """The value, checked against the kind and bounds (``ValueError`` naming the parameter)."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.kind == "int":
            value = _int(value, self.name, self.minimum)
            if value > self.maximum:
                raise ValueError(f"{self.name} must be at most {self.maximum}, got {value}")
            return value
        if not isinstance(value, str):
            raise ValueError(f"{self.name} must be text, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        return value


_FROM_SIGNATURE: Any = inspect.Parameter.empty


def arg(
    help: str,
    *,
    default: Any = _FROM_SIGNATURE,
    minimum: int = 0,
    maximum: int = MAX_PARAM,
    choices: tuple[str, ...] = (),
    fits: Fit | None = None,
) -> Param:
    """Declare one parameter of a registered factory (``@pattern(..., name=arg(...))``).

    Args:
        help: one line for the app.
        default: the registry's default; required when the signature has none, and otherwise
            only where the app should start elsewhere than the library.
        minimum: smallest integer value.
        maximum: largest integer value.
        choices: allowed values of a text parameter.
        fits: how large the value may be for a sequence.

    Returns:
        The declaration; ``pattern`` fills in the name and the default.
    """
    return Param("", default, help, minimum, maximum, choices, fits)


BLOCK = arg("tokens per block", default=8, minimum=1, fits=SPAN)
"""The ``block`` of the block-sparse patterns (the parameter ``BLOCKS`` counts in)."""


@dataclass(frozen=True)
class PatternInfo:
    """A registry entry: a factory and the parameters a spec gives it."""

    name: str
    title: str
    summary: str
    """One-line definition shown in the app."""
    params: tuple[Param, ...]
    """The spec parameters, in signature order."""
    factory: Callable[..., MaskMod]
    """The registered factory (with its parameter checks)."""
    context: tuple[str, ...] = ()
    """Factory parameters filled from a ``PatternContext`` rather than from the spec."""

    @property
    def needs(self) -> str:
        """``""`` (static), ``"probs"`` or ``"qk"``: what a context must carry."""
        return next((_DATA_NEEDS[c] for c in self.context if c in _DATA_NEEDS), "")

    def values(self, params: Mapping[str, Any]) -> tuple[tuple[str, int | bool | str], ...]:
        """Every parameter's value, defaults filled in, in registry order, each one checked.

        Args:
            params: the values given (others take their defaults).

        Returns:
            ``(name, value)`` pairs.

        Raises:
            ValueError: an unknown parameter or a value out of bounds.
        """
        known = {p.name for p in self.params}
        extra = sorted(set(params) - known)
        if extra:
            raise ValueError(
                f"{self.name} has no parameter {', '.join(extra)}; its parameters: {', '.join(sorted(known)) or 'none'}"
            )
        values = tuple((p.name, p.check(params.get(p.name, p.default))) for p in self.params)
        if not self.context:
            # Checks across parameters (fixed: summary <= stride; vertical_stripe: the column
            # text) live in the factories; building once runs them now, not at first use.
            self.factory(**dict(values))
        return values

    def check(self, q_len: int, kv_len: int, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when a length-like parameter does not fit the sequence.

        Args:
            q_len: number of queries.
            kv_len: number of keys.
            params: every parameter's value.
        """
        for p in self.params:
            if p.fits is not None:
                p.fits.check(p.name, params[p.name], q_len, kv_len, params)

    def build(self, ctx: PatternContext, params: Mapping[str, Any]) -> MaskMod:
        """The ``mask_mod`` for a context.

        Args:
            ctx: lengths, and the attention or Q/K for data-dependent patterns.
            params: every parameter's value.

        Returns:
            The ``mask_mod``.
        """
        kwargs = dict(params)
        for name in self.context:
            value = getattr(ctx, name)
            if value is None:
                raise ValueError(f"the {self.title} pattern is estimated from the attention itself: "
                                 f"capture it first ({name} is missing)")
            kwargs[name] = value
        return self.factory(**kwargs)


PATTERNS: dict[str, PatternInfo] = {}
"""Every pattern by name, in the order the family modules register them."""


def _declared(factory: Callable[..., MaskMod], p: inspect.Parameter, decl: Param) -> Param:
    default = p.default if decl.default is _FROM_SIGNATURE else decl.default
    if default is _FROM_SIGNATURE:
        raise TypeError(f"{factory.__name__}: declare a default for {p.name} (the signature has none)")
    # The app picks a widget by the default's type: a default that contradicts the annotation
    # would offer the wrong one.
    plain = p.annotation if p.annotation in (bool, int, str) else None
    if plain is not None and (type(default) is not plain):
        raise TypeError(f"{factory.__name__}: default {default!r} of {p.name} is not {plain.__name__}")
    return replace(decl, name=p.name, default=default)


def pattern(
    title: str, summary: str, /, *, name: str | None = None, context: tuple[str, ...] = (), **declarations: Param
) -> Callable[[Callable[..., MaskMod]], Callable[..., MaskMod]]:
    """Register a ``mask_mod`` factory in ``PATTERNS``.

    Args:
        title: name shown in the app.
        summary: one-line definition shown in the app.
        name: registry key (default: the factory's name).
        context: factory parameters filled from a ``PatternContext`` (``q_len``, ``kv_len``,
            ``causal``, ``probs``, ``query``, ``key``).
        **declarations: an ``arg(...)`` for every other parameter of the factory (title and
            summary are positional-only, so a factory may have a ``summary`` parameter).

    Returns:
        A decorator that registers the factory and returns it with its integer and choice
        parameters checked on every call.
    """

    def register(factory: Callable[..., MaskMod]) -> Callable[..., MaskMod]:
        key = name or factory.__name__
        sig = inspect.signature(factory, eval_str=True)
        if key in PATTERNS:
            raise TypeError(f"a pattern named {key!r} is already registered")
        unknown = sorted((set(declarations) | set(context)) - set(sig.parameters))
        if unknown:
            raise TypeError(f"{factory.__name__} has no parameters {unknown}")
        if not set(context) <= _CONTEXT_FIELDS:
            extra = sorted(set(context) - _CONTEXT_FIELDS)
            raise TypeError(f"{factory.__name__}: context names PatternContext fields, not {extra}")
        params = []
        for p in sig.parameters.values():
            if p.name in context:
                continue
            if p.name not in declarations:
                raise TypeError(f"{factory.__name__}: declare {p.name} with arg(...) or list it in context")
            params.append(_declared(factory, p, declarations[p.name]))
        # Flags and column lists keep their factories' leniency (a truthy flag, a list of ints).
        bounded = [p for p in params if p.kind in ("int", "choice")]

        @functools.wraps(factory)
        def checked(*args: Any, **kwargs: Any) -> MaskMod:
            bound = sig.bind(*args, **kwargs)
            for p in bounded:
                if p.name in bound.arguments:
                    bound.arguments[p.name] = p.check(bound.arguments[p.name])
            return factory(*bound.args, **bound.kwargs)

        PATTERNS[key] = PatternInfo(key, title, summary, tuple(params), checked, tuple(context))
        return checked

    return register
