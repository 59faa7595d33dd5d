"""Reading and setting `parameters` entries of a model's config.pbtxt.

One editor for everyone who adapts a served repository (staging it for tests and
benchmarks, switching hstu_pool to the TensorRT deployment's BLS network), so
what counts as a parameter entry is written once. It edits text, not a parsed
protobuf: comments and layout survive, and the protobuf package is not needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

_ANY_ENTRY = re.compile(r'key: "([^"]+)" value: \{ string_value: "([^"]*)"')


def _entry(key: str) -> re.Pattern[str]:
    return re.compile(r'(key: "' + re.escape(key) + r'" value: \{ string_value: ")([^"]*)(")')


def parameters(config: Path) -> dict[str, str]:
    """Every `parameters` entry of a config.pbtxt as key -> string value, as Triton hands them to a model."""
    return {m.group(1): m.group(2) for m in _ANY_ENTRY.finditer(config.read_text())}


def get_parameter(config: Path, key: str) -> str:
    """The string value of a `parameters` entry of a config.pbtxt; KeyError when absent."""
    match = _entry(key).search(config.read_text())
    if match is None:
        raise KeyError(f"{config}: no parameter {key!r}")
    return match.group(2)


def set_parameters(config: Path, values: Mapping[str, str]) -> None:
    """Set existing `parameters` entries of a config.pbtxt; an unknown key is an error, not an addition
    (a misspelt key would otherwise leave the default it meant to change in force)."""
    text = config.read_text()
    for key, value in values.items():
        text, count = _entry(key).subn(lambda m, new=str(value): m.group(1) + new + m.group(3), text)
        if count != 1:
            raise KeyError(f"{config}: no parameter {key!r} to set")
    config.write_text(text)
