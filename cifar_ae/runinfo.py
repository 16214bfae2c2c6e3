"""The command line a run records in its config.json (light: no Keras import)."""
from __future__ import annotations

import ast
import shlex
import sys
from pathlib import Path

_command: str | None = None


def set_command(argv) -> None:
    """Called by the CLI with the arguments it parsed, so `main([...])` records them too (not pytest's argv)."""
    global _command
    _command = "python -m cifar_ae " + shlex.join(argv)


def command_line() -> str:
    """How this run was started, as a user would retype it."""
    if _command is not None:
        return _command
    prog = Path(sys.argv[0]).name
    prog = "python -m cifar_ae" if prog == "__main__.py" else prog
    return " ".join([prog] + sys.argv[1:])


def parse_assignments(items, option="--set", example="learning_rate=3e-4") -> dict:
    """["NAME=VALUE", ...] -> {NAME: the Python literal, or the plain string}, as typed on a command line."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"bad {option} {item!r}; write NAME=VALUE, e.g. {option} {example}.")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
