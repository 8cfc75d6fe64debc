"""Errors the MongoDB side of capture raises when retrying cannot help.

Both are terminal: the capture activity turns them into non-retryable application errors, so the
pipeline moves to FAILED with the message, which always names the fix.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import OperationFailure

__all__ = [
    "CaptureSourceError",
    "HistoryLostError",
    "source_error",
]

#: Server error codes that mean the resume point is no longer (or was never) in the oplog.
_HISTORY_LOST_CODES = {
    286,  # ChangeStreamHistoryLost: the start point fell off the oplog
    280,  # ChangeStreamFatalError: "the resume token was not found" at its cluster time
    136,  # CappedPositionLost: the oplog was truncated past a tailing cursor
}
_NO_REPLICA_SET_CODES = {40573}  # "$changeStream is only supported on replica sets"
_UNAUTHORIZED_CODES = {13}
_POST_IMAGE_MISSING_CODES = {47}  # NoMatchingDocument under fullDocument: required
_TOO_LARGE_CODES = {10334}  # BSONObjectTooLarge: a change event over 16 MB


class CaptureSourceError(RuntimeError):
    """MongoDB cannot serve the stream as configured (retrying will not help)."""


class HistoryLostError(CaptureSourceError):
    """The resume point (resume token or oplog timestamp) is gone from the oplog.

    Changes between the checkpoint and the oldest oplog entry cannot be read any more, so
    continuing would silently lose them. The pipeline's `source.on_history_lost` policy says what
    happens next (`fail`: the pipeline fails with this error; `resnapshot`: the workflow re-syncs).
    """

    FIX = (
        "the resume point is gone from the oplog; set source.on_history_lost: resnapshot (or "
        "snapshot.mode: when_needed) to re-sync from a new snapshot, and enlarge the oplog"
    )

    def __init__(self, where: str, resume_point: Any, detail: str = "") -> None:
        self.resume_point = resume_point
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{where}: {self.FIX}; resume point {resume_point!r}{suffix}")


def source_error(exc: OperationFailure, where: str, resume_point: Any) -> Exception:
    """The clear error for a server failure, or `exc` itself when it may be transient."""
    code = exc.code
    if code in _HISTORY_LOST_CODES:
        return HistoryLostError(where, resume_point, f"server error {code}: {_first_line(exc)}")
    if code in _NO_REPLICA_SET_CODES:
        return CaptureSourceError(
            f"{where}: change streams need a replica set or sharded cluster; "
            "start mongod with --replSet and initiate it"
        )
    if code in _UNAUTHORIZED_CODES:
        return CaptureSourceError(
            f"{where}: the MongoDB user may not read the changes ({_first_line(exc)}); grant it "
            "find and changeStream on the database (role read), and for the oplog strategy "
            "read on the local database"
        )
    if code in _POST_IMAGE_MISSING_CODES:
        return CaptureSourceError(
            f"{where}: full_document is 'required' but MongoDB has no post-image for an update; "
            "enable changeStreamPreAndPostImages on the collection (source.enable_pre_images: "
            "true) or use full_document: update_lookup"
        )
    if code in _TOO_LARGE_CODES:
        return CaptureSourceError(
            f"{where}: a change event is over MongoDB's 16 MB limit ({_first_line(exc)}); "
            "turn off pre_images or post-images (full_document: update_lookup) for this "
            "collection, or use the oplog strategy, whose entries stay under the limit"
        )
    return exc


def _first_line(exc: OperationFailure) -> str:
    message = str(exc.details.get("errmsg") if exc.details else exc) or str(exc)
    return message.splitlines()[0][:300]
