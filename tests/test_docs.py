"""The docs stay true: every setting is documented under its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakeward.settings import Settings, StackSettings

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("settings", [Settings, StackSettings])
def test_every_setting_is_documented_with_its_default(settings) -> None:
    text = (DOCS / "settings.md").read_text()
    for name, field in settings.model_fields.items():
        prefix = f"| `LAKEWARD_{name.upper()}` | {settings.__name__} |"
        row = next((line for line in text.splitlines() if line.startswith(prefix)), None)
        assert row is not None, f"LAKEWARD_{name.upper()} is missing from docs/settings.md"
        value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        default = "(unset)" if value is None else str(value)
        assert f"`{default}`" in row, f"docs/settings.md gives the wrong default for {name}"
        assert field.description, f"{settings.__name__}.{name} has no description"
