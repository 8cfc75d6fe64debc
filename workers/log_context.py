"""Every log line of an activity names its pipeline, collection and component.

A worker interceptor reads them from the activity's input (every Lakeward activity takes one
dataclass with `spec` and often `collection`) and binds them for the activity's whole run:
the engine's own log calls, the heartbeat thread, and the SDK's "Completing activity as failed"
line all carry them, with no code in the activities themselves.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from lakeward.logs import Component, bind

__all__ = ["LogContextInterceptor", "activity_component"]


def activity_component(activity_type: str) -> Component:
    """The log component of an activity, from its registered name."""
    if "reconcile" in activity_type or activity_type.startswith("hash_"):
        return "reconcile"
    if "apply" in activity_type:
        return "apply"
    if "capture" in activity_type or "snapshot" in activity_type:
        return "capture"
    return "worker"


class LogContextInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next)


class _Inbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        fields: dict[str, Any] = {"component": activity_component(activity.info().activity_type)}
        first = input.args[0] if input.args else None
        spec = getattr(first, "spec", None)
        if spec is not None and isinstance(getattr(spec, "name", None), str):
            fields["pipeline"] = spec.name
        elif isinstance(pipeline := getattr(first, "pipeline", None), str):
            fields["pipeline"] = pipeline
        if isinstance(collection := getattr(first, "collection", None), str):
            fields["collection"] = collection
        # Not reset at the end on purpose: each activity runs in its own asyncio task (its own
        # context, copied into the thread of a sync activity), and the SDK logs the activity's
        # failure after this returns, still in that task.
        bind(**fields)
        return await super().execute_activity(input)
