"""JSON from files a user or another machine may have damaged or crafted: bounded in size and depth (light)."""
from __future__ import annotations

import json
from pathlib import Path

MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64  # run and trial files are a few levels deep; a hostile one 100,000 deep must not reach json's recursion


def _depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings, without recursion."""
    deepest = level = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            level += 1
            deepest = max(deepest, level)
        elif ch in "]}":
            level -= 1
    return deepest


def load_json(path):
    """The parsed file, or a ValueError whose text says what is wrong ("is not valid JSON (line 3, ...)")."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"is over {MAX_JSON_BYTES >> 20} MiB")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"is unreadable ({e})") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"is nested over {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
