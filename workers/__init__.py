"""The composition root: settings -> adapters -> Temporal workers."""
