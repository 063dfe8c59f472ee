"""Bad input data: the one exception type, and reading JSON files into it.

Commands catch ``DatasetError`` and print its message (which names the file) without a trace.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


def read_json_file(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing or malformed one raises DatasetError naming it."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
