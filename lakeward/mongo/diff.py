"""Applying a MongoDB `$v: 2` update diff (the oplog's update format since 5.0) to a pre-image.

No library implements this format, so it is written here from the server's rules (mongod's
`document_diff_applier`), which matter for field order, since the post-image must equal the
one MongoDB computes for change streams (`fullDocument: required`):

- object diff: sections `d` (fields to delete), `u` (fields to set), `i` (fields to insert) and
  `s<field>` (a nested diff). Fields keep their pre-image order; an updated field stays where it
  was; inserted fields, and updated fields the pre-image lacks, are appended in diff order
  (updates first, then inserts); a nested diff whose type does not match the pre-image's value
  gives null (MongoDB's rule for a later entry that rewrites the field).
- array diff (`a: true`): `l` is the new length (truncate, or pad with nulls), `u<index>` sets
  an element, `s<index>` applies a nested diff to one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DiffError", "apply_update_diff", "is_diff_update", "is_replacement"]


class DiffError(ValueError):
    """The update is not in a diff format this module understands."""


def is_diff_update(o: dict[str, Any]) -> bool:
    """Whether an `op: u` entry's `o` is a `$v: 2` diff."""
    return o.get("$v") == 2 and isinstance(o.get("diff"), dict)


def is_replacement(o: dict[str, Any]) -> bool:
    """Whether an `op: u` entry's `o` is a whole new document (no `$v`, no `$` operators)."""
    return not any(key.startswith("$") for key in o)


def apply_update_diff(pre_image: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    """The post-image of a `$v: 2` update entry (`o` = the entry's `o`)."""
    if not is_diff_update(o):
        raise DiffError(f"not a $v: 2 diff update: keys {sorted(o)}")
    return _apply_object(pre_image, o["diff"])


def _apply_object(pre: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    deletes: set[str] = set()
    updates: dict[str, Any] = {}
    inserts: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for section, body in diff.items():
        if section == "d":
            deletes.update(body)
        elif section == "u":
            updates.update(body)
        elif section == "i":
            inserts.update(body)
        elif section.startswith("s") and isinstance(body, dict):
            nested[section[1:]] = body
        else:
            raise DiffError(f"unknown diff section {section!r}")
    out: dict[str, Any] = {}
    done: set[str] = set()
    for field, value in pre.items():
        if field in deletes or field in inserts:
            continue  # deleted, or moved to the end by an insert
        if field in updates:
            out[field] = updates[field]
            done.add(field)
        elif field in nested:
            out[field] = _apply_nested(value, nested[field])
        else:
            out[field] = value
    for field, value in [*updates.items(), *inserts.items()]:
        if field not in done:
            out[field] = value
    return out


def _apply_nested(value: Any, diff: dict[str, Any]) -> Any:
    is_array_diff = diff.get("a") is True
    if is_array_diff and isinstance(value, list):
        return _apply_array(value, diff)
    if not is_array_diff and isinstance(value, dict):
        return _apply_object(value, diff)
    return None  # type mismatch: a later entry rewrites this field


def _apply_array(pre: list[Any], diff: dict[str, Any]) -> list[Any]:
    new_length: int | None = None
    mods: dict[int, tuple[str, Any]] = {}
    for section, body in diff.items():
        if section == "a":
            continue
        if section == "l":
            new_length = int(body)
        elif section[:1] in ("u", "s") and section[1:].isdigit():
            mods[int(section[1:])] = (section[0], body)
        else:
            raise DiffError(f"unknown array diff section {section!r}")
    length = new_length if new_length is not None else max(len(pre), max(mods, default=-1) + 1)
    out: list[Any] = []
    for index in range(length):
        mod = mods.get(index)
        has_pre = index < len(pre)
        if mod is None:
            out.append(pre[index] if has_pre else None)
        elif mod[0] == "u":
            out.append(mod[1])
        else:
            out.append(_apply_nested(pre[index], mod[1]) if has_pre else None)
    return out
