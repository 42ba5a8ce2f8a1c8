"""How hard the hypothesis tests search: ``RALF_FUZZ_SCALE`` (default 1) multiplies every
test's number of examples, for long runs outside CI (docs/testing.md)."""

from __future__ import annotations

import os


def examples(default: int) -> int:
    """The number of examples a test runs: its default, scaled."""
    return max(1, int(default * float(os.environ.get("RALF_FUZZ_SCALE", "1"))))
