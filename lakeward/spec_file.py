"""Reading a pipeline spec (or a patch of one) that a person wrote as YAML or JSON.

The CLI sends what it reads to the API as JSON, so the text must load into plain JSON values
only. YAML turns some unquoted scalars into other types (`2024-01-01` is a date, `!!binary` makes
bytes, `.nan` a float no JSON holds) and allows anchors that expand into huge documents; those are
refused here with a message that says how to write the value, instead of failing later as a
traceback or reaching the API as something the user did not write.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import yaml

__all__ = ["SpecFileError", "load_spec_text"]

#: Deeper than any spec or patch; bounds recursion on hostile input.
MAX_DEPTH = 32
#: Aliases expand in place: a few anchors can multiply a small file ("billion laughs").
MAX_NODES = 100_000


class SpecFileError(ValueError):
    """The text is not YAML or JSON, or holds values JSON cannot carry."""


def load_spec_text(text: str) -> Any:
    """The YAML (or JSON, a subset of it) document in `text`, as plain JSON values."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecFileError(f"not valid YAML or JSON: {exc}") from None
    except RecursionError:
        raise SpecFileError(f"nested deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:
        # PyYAML's parser fails on some malformed input with its own bugs (an AttributeError
        # from a directive; tests/fuzz found it): still a file that is not YAML, not a crash.
        raise SpecFileError(f"not valid YAML or JSON ({type(exc).__name__})") from None
    _check(document, "", 0, [0])
    return document


def _check(value: Any, where: str, depth: int, nodes: list[int]) -> None:
    nodes[0] += 1
    if nodes[0] > MAX_NODES:
        raise SpecFileError(f"more than {MAX_NODES} values (YAML anchors expanding?)")
    if depth > MAX_DEPTH:
        raise SpecFileError(f"nested deeper than {MAX_DEPTH} levels at {where or 'the top'}")
    at = where or "the top level"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecFileError(
                    f'{at}: the key {key!r} is not a string; quote it ("{key}": ...)'
                )
            _check(item, f"{where}.{key}" if where else key, depth + 1, nodes)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]", depth + 1, nodes)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecFileError(f"{at}: {value} is not a number JSON can carry")
    elif isinstance(value, dt.date | dt.datetime):
        raise SpecFileError(
            f"{at}: YAML read {value.isoformat()} as a date; quote it to keep it a string"
        )
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise SpecFileError(
            f"{at}: a {type(value).__name__} value is not allowed; use strings, numbers, "
            "booleans, lists and mappings"
        )
