"""Node options, declared once per kind and checked in one place.

A node kind lists its options as ``OPTIONS = {key: Option(check, default)}``;
:class:`nodes.runtime.Node` checks ``cfg.options`` against them before the
kind's ``__init__`` reads them (:func:`validate`), so a kind reads
``self.options[key]`` knowing its type, and a bad value stops the node with
one line naming the node, the option and the value (:class:`OptionError`).
Options a kind does not declare pass through unchecked (the topology may
carry options for the orchestrator).

A check is a predicate with the words for what it accepts::

    OPTIONS = {"frames": Option(integer(min=1)),             # required
               "tick_ms": Option(number(above=0), 10),       # default 10
               "memory": Option(pair(integer(min=0)), [0, 0])}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from nodes.errors import OptionError

REQUIRED = object()  # Option default: the option must be given


@dataclass(frozen=True)
class Check:
    """``test(value)`` is true for an acceptable value; ``expected`` says which those are."""

    test: Callable[[Any], bool]
    expected: str

    def __call__(self, value: Any) -> bool:
        return self.test(value)


@dataclass(frozen=True)
class Option:
    """One option: its check and its default (:data:`REQUIRED`: none)."""

    check: Check
    default: Any = REQUIRED


def _range(lo: float | None, hi: float | None, above: float | None) -> tuple[Callable[[Any], bool], str]:
    words = []
    if above is not None:
        words.append(f"> {above:g}")
    if lo is not None and hi is not None:
        words.append(f"{lo:g}..{hi:g}")
    elif lo is not None:
        words.append(f">= {lo:g}")
    elif hi is not None:
        words.append(f"<= {hi:g}")

    def within(v: Any) -> bool:
        return ((lo is None or v >= lo) and (hi is None or v <= hi) and (above is None or v > above))

    return within, " ".join(words)


def integer(min: int | None = None, max: int | None = None) -> Check:
    """An int (not a bool) in [min, max]."""
    within, words = _range(min, max, None)
    return Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and within(v),
                 f"an integer {words}".rstrip())


def number(min: float | None = None, max: float | None = None, above: float | None = None) -> Check:
    """A finite int or float (not a bool) in [min, max], > ``above``."""
    within, words = _range(min, max, above)
    return Check(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 and within(v), f"a number {words}".rstrip())


def boolean() -> Check:
    return Check(lambda v: isinstance(v, bool), "true or false")


def string() -> Check:
    return Check(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def one_of(*values: Any) -> Check:
    return Check(lambda v: not isinstance(v, bool) and v in values, " or ".join(repr(v) for v in values))


def pair(item: Check, names: str = "first, count") -> Check:
    """A two-element list (or tuple) of ``item``s."""
    return Check(lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(item, v)),
                 f"[{names}], each {item.expected}")


def list_of(item: Check, distinct: bool = False) -> Check:
    def test(v: Any) -> bool:
        return (isinstance(v, list) and all(map(item, v))
                and (not distinct or len({repr(x) for x in v}) == len(v)))
    return Check(test, f"a list{' without repeats' if distinct else ''}, each {item.expected}")


def mapping(value: Check) -> Check:
    """A table of string keys to ``value``s."""
    return Check(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v) and all(map(value, v.values())),
                 f"a table of names to {value.expected}")


def optional(check: Check) -> Check:
    """``check`` or null (no value)."""
    return Check(lambda v: v is None or check(v), f"{check.expected} or nothing")


def validate(kind: str, node: str, schema: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``schema``, the defaults of the options not given filled in.

    Raises:
        OptionError: the first option (in the schema's order) that is missing or has a bad value.
    """
    options = dict(given)
    for key, opt in schema.items():
        if key not in options:
            if opt.default is REQUIRED:
                raise OptionError(kind, node, key, None, f"{opt.check.expected} (it is required)")
            options[key] = opt.default
            continue
        if not opt.check(options[key]):
            raise OptionError(kind, node, key, options[key], opt.check.expected)
    return options
