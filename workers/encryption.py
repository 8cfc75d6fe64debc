"""The worker's payload encryption: keys from the settings (lakeward/keys.py) into the codec."""

from __future__ import annotations

from temporalio.converter import DataConverter

from lakeward.keys import load_payload_keys
from lakeward.settings import Settings
from workflows.codec import EncryptionCodec, encrypted_converter

__all__ = ["encrypted_data_converter", "payload_codec"]


def payload_codec(settings: Settings) -> EncryptionCodec:
    keys = load_payload_keys(settings)
    return EncryptionCodec(keys.current, keys.previous)


def encrypted_data_converter(settings: Settings) -> DataConverter:
    """DATA_CONVERTER sealing every payload with the configured key; the API uses the same."""
    return encrypted_converter(payload_codec(settings))
