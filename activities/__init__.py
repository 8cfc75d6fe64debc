"""Thin Temporal adapters over the engine: build inputs, call it, heartbeat, translate errors."""
