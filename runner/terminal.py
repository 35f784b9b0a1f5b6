"""Consoles that a person can read and a pipe can grep: on a terminal rich fits its width; into a file or a
pipe nothing is wrapped or cut (rich would otherwise assume 80 columns and fold names across lines)."""
from __future__ import annotations

import sys

from rich.console import Console

UNWRAPPED_WIDTH = 100_000  # tables take only the width they need


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else UNWRAPPED_WIDTH)
