"""Built-in YAML tables an operator may extend with a file of the same shape.

Tool profiles (``configs/tools.yaml``, ``DEEPGUARD_TOOLS_FILE``) and the tools' detector files
(``configs/tool_weights.yaml``, ``DEEPGUARD_TOOL_WEIGHTS_FILE``) are read the same way: the
built-in table first, then the operator's, whose entries add to it or replace those of the
same name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from deepguard.errors import DeepguardError


def builtin_then_operator(name: str, extra: Path | None, variable: str) -> list[tuple[object, str]]:
    """``configs/NAME`` and, when set, the operator's file ``extra`` (named by the setting
    ``variable``): each parsed table with where it came from, in the order they apply. An
    operator's file that cannot be read is a one-line error."""
    text = resources.files("deepguard.configs").joinpath(name).read_text("utf-8")
    tables: list[tuple[object, str]] = [(yaml.safe_load(text), f"configs/{name}")]
    if extra is not None:
        try:
            tables.append((yaml.safe_load(extra.read_text("utf-8")), str(extra)))
        except (OSError, yaml.YAMLError) as error:
            raise DeepguardError(f"{variable} {extra}: cannot read it: {error}") from None
    return tables
