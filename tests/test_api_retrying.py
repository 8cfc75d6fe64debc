"""The status body's `retrying` errors read as one plain line (the disk-full fault in
tests/faults/ checks the field end to end)."""

from __future__ import annotations

from api.retrying import _plain


def test_a_coloured_cause_chain_becomes_one_plain_line() -> None:
    raised = OSError(
        "Generic LocalFileSystem error\n"
        "          \x1b[31m↳\x1b[0m Unable to copy data to file\n"
        "           \x1b[31m↳\x1b[0m No space left on device (os error 28)"
    )
    assert _plain(raised) == (
        "Generic LocalFileSystem error: Unable to copy data to file: "
        "No space left on device (os error 28)"
    )


def test_a_one_line_error_stays_as_it_is() -> None:
    assert _plain(RuntimeError("broker down: retry later")) == "broker down: retry later"
