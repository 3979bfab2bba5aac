"""The package list in pyproject.toml must name every package folder, or installs break."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "deepguard").rglob("__init__.py")
    }
    assert found | {"deepguard.configs", "deepguard.configs.presets"} == listed


def test_cli_help_lists_the_subcommands(capsys) -> None:
    import pytest

    from deepguard.cli import main

    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    for command in ("protect", "models", "serve", "watch"):
        assert command in out


def test_dashboard_files_ship_with_the_package() -> None:
    from fnmatch import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["deepguard.web"]
    static = ROOT / "deepguard" / "web" / "static"
    names = [path.relative_to(static.parent).as_posix() for path in static.iterdir()]
    assert names and all(any(fnmatch(n, p) for p in patterns) for n in names)
