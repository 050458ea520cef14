"""Validation of one TOML table: typed getters whose errors name file, dotted key, value and
fix in one line.

Every section parser (xenhad.config for its sections, xenhad.fencing.config for [fencing])
reads its table through a `Table`, so every mistake an operator can make reads the same:

    xenhad.toml: detector.confirm_misses = 0 is invalid: expected an integer >= 1
    xenhad.toml: fencing.hosts[0].redfsh = { ... } is not a known key: did you mean ...?
    xenhad.toml: fencing.hosts[0].redfish.password_file is missing: expected the path ...

This module imports nothing else from xenhad but its errors, so any config-reading module
can use it without an import cycle (xenhad.config imports xenhad.fencing.config).

A value whose key names a secret (a password typed into the config by mistake) is shown
as "***": these messages go to terminals, journals and bug reports.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from xenhad.errors import ConfigError

Scalar = TypeVar("Scalar", str, int, bool)

MIN_SECONDS = 0.01
"""The shortest duration any option takes (but those where 0 means "off"): below 10 ms a
timeout or an interval is a typo, and a loop on it a busy loop."""

_SCALAR_NOUNS: dict[type, str] = {str: "strings", int: "integers", bool: "booleans"}


def render_value(value: object) -> str:
    """A value as TOML spells it, kept short: the `= value` part of an error message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, (str, Path)):
        text = json.dumps(str(value), ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = (
            "{ "
            + ", ".join(f"{k} = {render_value(masked(str(k), v))}" for k, v in value.items())
            + " }"
        )
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(render_value(v) for v in value) + "]"
    elif isinstance(value, enum.Enum):
        text = render_value(value.value)
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


MAX_KEY_SHOWN = 64
"""Longer key names are cut in messages: a key is the file's author's to make 1 MB long."""


def shown_key(key: str) -> str:
    """`key` as a message names it: cut to MAX_KEY_SHOWN characters, and quoted as TOML
    would when it is not a bare key (so a newline in it cannot split the line)."""
    if len(key) > MAX_KEY_SHOWN:
        key = key[: MAX_KEY_SHOWN - 3] + "..."
    if re.fullmatch(r"[A-Za-z0-9_\-\[\].]+", key):
        return key
    return json.dumps(key, ensure_ascii=False)


def masked(key: str, value: object) -> object:
    """`value`, or "***" when `key` reads like it holds a secret rather than names one.

    password_file and password_credential name where a secret lives (safe to show); a key
    such as `password` or `passwd` holds the secret itself.
    """
    lowered = key.lower()
    if ("pass" in lowered or "secret" in lowered) and not lowered.endswith(
        ("_file", "_credential")
    ):
        return "***"
    return value


def choice_words(value: object, choices: Sequence[str], *, lead: str = "expected one of") -> str:
    """`expected one of "a", "b"`, with `(did you mean "b"?)` when `value` is close to one."""
    words = f"{lead} " + ", ".join(json.dumps(c) for c in choices)
    if isinstance(value, str):
        close = [c for c in choices if c == value.lower()]
        close = close or difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        if close:
            words += f" (did you mean {json.dumps(close[0])}?)"
    return words


class Table:
    """One TOML table being validated: typed getters that raise one-line ConfigErrors.

    Unknown keys are refused as soon as the table is opened, before any value is checked:
    a misspelt key means the value the operator meant was silently not applied, which is
    the first thing to tell them.

    `neighbours` (table name -> its known keys) lets the message for a key written in the
    wrong top-level table say where it belongs; subtables do not inherit it.
    """

    def __init__(
        self,
        source: str,
        prefix: str,
        data: Mapping[str, object],
        known: Iterable[str],
        *,
        neighbours: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.source = source
        self.prefix = prefix
        self.data = data
        self.known = tuple(known)
        self.neighbours = {name: tuple(keys) for name, keys in (neighbours or {}).items()}
        for key, value in data.items():
            if key not in self.known:
                raise ConfigError(self._unknown_key_message(key, value))

    def dotted(self, key: str) -> str:
        key = shown_key(key)
        return f"{self.prefix}.{key}" if self.prefix else key

    def has(self, key: str) -> bool:
        return key in self.data

    def error(self, key: str, value: object, expected: str) -> ConfigError:
        """`source: prefix.key = value is invalid: expected ...`"""
        return ConfigError(
            f"{self.source}: {self.dotted(key)} = {render_value(value)} is invalid: {expected}"
        )

    def missing(self, key: str, fix: str) -> ConfigError:
        """`source: prefix.key is missing: fix`, for a key that has no usable default."""
        return ConfigError(f"{self.source}: {self.dotted(key)} is missing: {fix}")

    def blame_pair(self, a: str, a_value: float, a_op: str, b: str, b_value: float) -> NoReturn:
        """Raise for a broken rule `a a_op b` between two keys, naming the key the operator
        wrote.

        When only `b` is in the file, `b` broke the rule against `a`'s default: the message
        blames `b` and says the other value is a default, so the fix is obvious. Otherwise
        `a` (the dependent key) is blamed.
        """
        flipped = {">=": "<=", "<=": ">=", "<": ">", ">": "<"}[a_op]
        if self.has(b) and not self.has(a):
            raise self.error(
                b,
                self.data[b],
                f"expected {flipped} {self.dotted(a)} ({a_value!r}, the default): "
                f"set {self.dotted(a)} too",
            )
        raise self.error(
            a, self.data.get(a, a_value), f"expected {a_op} {self.dotted(b)} ({b_value!r})"
        )

    def _unknown_key_message(self, key: str, value: object) -> str:
        # The value is never shown: a key we do not know may hold anything, a password
        # under a name `masked` does not recognise ("pw", "token") included.
        where = self.dotted(key)
        close = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {self.dotted(close[0])}?"
        else:
            elsewhere = [name for name, keys in self.neighbours.items() if key in keys]
            if elsewhere:
                hint = f"it belongs in [{elsewhere[0]}]: did you mean {elsewhere[0]}.{key}?"
            else:
                hint = "known keys: " + ", ".join(self.known)
        return f"{self.source}: {where} is not a known key: {hint}"

    # -- getters: each returns the default when the key is absent ------------------------

    def string(
        self,
        key: str,
        default: str,
        *,
        pattern: str | None = None,
        expected: str = "expected a string",
    ) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, value, expected)
        if pattern is not None and value and not re.fullmatch(pattern, value):
            raise self.error(key, value, expected)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, "expected true or false (no quotes)")
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        """An integer from `minimum` to `maximum`: every one has a range, so a typo of a few
        extra digits is an error here, not a daemon that never confirms a host down."""
        value = self.data.get(key, default)
        expected = _range_words("an integer", minimum, maximum)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, value, expected)
        if not minimum <= value <= maximum:
            raise self.error(key, value, expected)
        return value

    def seconds(
        self, key: str, default: float, *, maximum: float, allow_zero: bool = False
    ) -> float:
        """A duration in seconds, an integer or a float: from MIN_SECONDS (0 with
        `allow_zero`) to `maximum`. A timeout of 1e300 is a typo, not a wish: it overflows
        the first call that waits on it."""
        value = self.data.get(key, default)
        minimum = 0.0 if allow_zero else MIN_SECONDS
        expected = f"expected a number of seconds from {minimum:g} to {maximum:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, value, expected)
        # Compared before any float(): an integer of 400 digits overflows a float.
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, value, expected)
        if not minimum <= value <= maximum:
            raise self.error(key, value, expected)
        return float(value)

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.error(key, value, choice_words(value, choices))
        return value

    def array(
        self,
        key: str,
        item: type[Scalar],
        default: Sequence[Scalar] = (),
        *,
        min_items: int = 0,
        choices: Sequence[Scalar] | None = None,
        unique: bool = False,
        expected: str | None = None,
    ) -> list[Scalar]:
        """An array of scalars of type `item`; with `choices`, each must be one of them; with
        `unique`, none may repeat. `expected` replaces the words for a wrong shape."""
        value = self.data.get(key, list(default))
        if expected is None:
            noun = f"an array of {_SCALAR_NOUNS[item]}"
            if min_items == 1:
                noun = f"a non-empty array of {_SCALAR_NOUNS[item]}"
            expected = f"expected {noun}"
            if min_items > 1:
                expected += f" with at least {min_items} items"
        if not isinstance(value, list) or len(value) < min_items:
            raise self.error(key, value, expected)
        items: list[Scalar] = []
        for entry in value:
            # TOML's true is a Python int too: an array of integers must not take it.
            if not isinstance(entry, item) or (item is int and isinstance(entry, bool)):
                raise self.error(key, value, expected)
            if choices is not None and entry not in choices:
                lead = f"{render_value(entry)} is not one of"
                raise self.error(
                    key, value, choice_words(entry, [str(c) for c in choices], lead=lead)
                )
            if unique and entry in items:
                raise self.error(
                    key, value, f"{render_value(entry)} is listed twice: list it once"
                )
            items.append(entry)
        return items

    def path(self, key: str, default: Path) -> Path:
        found = self.optional_path(key, default)
        if found is None:
            raise self.error(key, "", "expected an absolute path")
        return found

    def optional_path(self, key: str, default: Path | None = None) -> Path | None:
        """An absolute path, or None for "" (unset). Relative paths are refused: a daemon's
        working directory is nobody's business, and guessing it is how files go missing."""
        value = self.data.get(key, "" if default is None else str(default))
        if not isinstance(value, str):
            raise self.error(key, value, "expected a path as a string")
        if not value:
            return None
        if not value.startswith("/"):
            raise self.error(key, value, "expected an absolute path (starting with /)")
        return Path(value)

    def subtable(self, key: str, known: Iterable[str]) -> Table:
        """The table at `key` (empty when absent), its keys checked against `known`."""
        value = self.data.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, value, f"expected a table [{self.dotted(key)}]")
        return Table(self.source, self.dotted(key), value, known)

    def array_of_tables(self, key: str, known: Iterable[str]) -> list[Table]:
        """`[[prefix.key]]` entries, each a Table whose dotted keys read `prefix.key[i].x`."""
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self.error(key, value, f"expected [[{self.dotted(key)}]] tables")
        known = tuple(known)
        return [
            Table(self.source, f"{self.dotted(key)}[{i}]", item, known)
            for i, item in enumerate(value)
        ]


def _range_words(noun: str, minimum: int, maximum: int) -> str:
    return f"expected {noun} from {minimum} to {maximum}"
