"""What ``protect`` reads and writes: each input of a file or folder, its output and report.

Whatever can be refused without the attack is refused here, before it runs: an input that
is not a regular file, an output or report that cannot be written, and an output that would
replace an input (the original photo) unless the user asked for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepguard.errors import InputError, OutputError
from deepguard.fileio import check_writable
from deepguard.stages.decode import check_input_file
from deepguard.stages.image_io import IMAGE_SUFFIXES
from deepguard.stages.video_io import VIDEO_SUFFIXES

MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


@dataclass(frozen=True)
class Target:
    """One file to protect: where it is read, written and reported."""

    source: Path
    output: Path
    report: Path | None = None


def default_output(path: Path) -> Path:
    """``photo.jpg`` → ``photo.protected.jpg``: predictable, never overwrites the input."""
    return path.with_name(f"{path.stem}.protected{path.suffix}")


def plan_targets(
    source: Path, output: Path | None, report: Path | None, overwrite: bool = False
) -> list[Target]:
    """The targets for ``deepguard protect SOURCE [-o OUTPUT] [--report REPORT]``.

    A folder gives one target per image or video in it (outputs under ``OUTPUT``, default
    ``SOURCE/protected``; reports ``REPORT/NAME.json``); its files are checked one by one
    when protected, so one bad file does not stop the others.
    """
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if p.suffix.lower() in MEDIA_SUFFIXES)
        if not inputs:
            raise InputError(f"{source}: no JPEG, PNG, WebP, MP4 or MOV files to protect")
        folder = output or source / "protected"
        targets = [
            Target(path, folder / path.name, report / f"{path.stem}.json" if report else None)
            for path in inputs
        ]
    else:
        check_input_file(source)
        targets = [Target(source, output or default_output(source), report)]
    for target in targets:
        check_writable(target.output)
        if target.report:
            check_writable(target.report)
    _refuse_replacing_inputs(targets, overwrite)
    return targets


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names after links: equal for the same file however
    it is reached (relative path, symbolic or hard link)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _refuse_replacing_inputs(targets: list[Target], overwrite: bool) -> None:
    inputs = {file_id: t.source for t in targets if (file_id := _file_id(t.source))}
    for target in targets:
        replaced = inputs.get(_file_id(target.output))
        if replaced and not overwrite:
            raise OutputError(
                f"{target.output}: is the input {replaced}; protecting it would replace the "
                f"original (pass --overwrite to do that)"
            )
        if target.report and (replaced := inputs.get(_file_id(target.report))):
            raise OutputError(f"{target.report}: the report would replace the input {replaced}")
