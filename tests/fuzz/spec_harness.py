"""Atheris harness: the pipeline spec parser, on both paths a spec takes.

- JSON: the API's path; the body is parsed as JSON, then validated as a PipelineSpec.
- YAML: the CLI's path; lakeward.spec_file.load_spec_text, then the JSON the CLI sends, then
  the same validation.

Only the documented refusals may escape: pydantic's ValidationError, a JSON decode error, and
SpecFileError. A spec that validates must also survive what the API does next: its sink made
absolute, its tables listed, and a round trip through the JSON Temporal stores it as.

    python tests/fuzz/spec_harness.py -runs=20000 CORPUS_DIR   (libFuzzer flags)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris
from pydantic import ValidationError

with atheris.instrument_imports(include=["workflows", "lakeward.spec_file", "yaml"]):
    from lakeward.spec_file import SpecFileError, load_spec_text
    from workflows.spec import PipelineSpec


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    as_yaml = fdp.ConsumeBool()
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if as_yaml:
            document = json.loads(json.dumps(load_spec_text(raw.decode("utf-8", "replace"))))
        else:
            document = json.loads(raw)
        spec = PipelineSpec.model_validate(document)
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError, SpecFileError):
        return
    absolute = spec.with_absolute_sink(Path("/srv/lakeward"))
    absolute.tables()
    stored = json.loads(json.dumps(absolute.model_dump(mode="json")))
    assert PipelineSpec.model_validate(stored) == absolute, "the spec changed on its round trip"


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
