"""Activities a pipeline is retrying now, with their last error, for the status body.

The workflow learns of an activity's failure only once Temporal gives up on it, so a transient
fault that retries for minutes (a full disk under the lake, an object store that answers 500)
would leave `last_error` empty while nothing progresses. The server does know each pending
activity's attempt and last failure: the status reads them from `describe()`, decoded by the
client's data converter (the payload codec encrypts failure messages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.service import RPCError

__all__ = ["RetryingActivity", "retrying_activities"]

#: Terminal colour codes: delta-rs colours the cause chain of the errors it raises.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class RetryingActivity:
    activity: str  # the activity type, e.g. apply_batch
    attempt: int  # the attempt running or due next (2 = first retry)
    error: str  # the last attempt's failure, as the activity reported it


async def retrying_activities(client: Client, workflow_id: str) -> list[RetryingActivity]:
    """The workflow's pending activities whose last attempt failed; empty if the server cannot
    say."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return []  # the status itself answered: leave this part out rather than fail it
    converter = client.data_converter
    retrying = []
    for pending in description.raw_description.pending_activities:
        if not pending.HasField("last_failure"):
            continue
        error = _plain(await converter.decode_failure(pending.last_failure))
        retrying.append(RetryingActivity(pending.activity_type.name, pending.attempt, error))
    return retrying


def _plain(error: BaseException) -> str:
    """One line without colour codes: a driver's multi-line cause chain ("... \n  ↳ cause")
    becomes "...: cause: ..."."""
    lines = (line.strip().lstrip("↳").strip() for line in _ANSI.sub("", str(error)).splitlines())
    return ": ".join(line for line in lines if line)
