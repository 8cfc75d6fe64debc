"""The FastAPI facade over Temporal."""
