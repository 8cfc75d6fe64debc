"""Deterministic orchestration: Temporal workflows and their contracts. No I/O here.

Nothing is imported here on purpose: `workflows.spec` is a leaf module every layer imports (the
engine too), and importing this package must not pull in Temporal.
"""
