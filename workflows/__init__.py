"""Deterministic orchestration: Temporal workflows and their contracts. No I/O here."""

from workflows.pipeline import PipelineWorkflow

__all__ = ["PipelineWorkflow"]
