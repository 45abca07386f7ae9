"""Argument types and the parser class shared by the subcommands: a bad value ends in one line naming the option.

``python -m cbir evaluate --index lsh -g 0`` prints ``python -m cbir evaluate: error: argument -g/--n-tables: must be
>= 1, got 0`` and exits with code 2 (argparse's code for a usage error), instead of reaching the index's validation
and its traceback. Numbers are checked here, at the boundary, with the limits the library enforces.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (no usage block), exit code 2; its
    subparsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _number(convert: Callable[[str], T], kind: str, minimum: float, strict: bool) -> Callable[[str], T]:
    """An argparse ``type``: ``convert(text)``, finite, ``>= minimum`` (``> minimum`` when ``strict``)."""
    relation = ">" if strict else ">="

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):  # type: ignore[arg-type]
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum:g}, got {text}")
        return value

    parse.__name__ = kind  # argparse names the type in "invalid <type> value" messages
    return parse


positive_int = _number(int, "an integer", 1, strict=False)
non_negative_int = _number(int, "an integer", 0, strict=False)
positive_float = _number(float, "a number", 0.0, strict=True)


def list_of(convert: Callable[[str], T], kind: str) -> Callable[[str], list[T]]:
    """An argparse ``type``: comma-separated ``kind`` (e.g. "integers") each converted (and checked) by ``convert``,
    at least one."""

    def parse(text: str) -> list[T]:
        try:
            values = [convert(part) for part in text.split(",") if part.strip()]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind}: {exc}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse
