"""Tool profiles: which detector a real face-swap tool runs, after which resize, at which score.

A protection counts for a tool only if the tool misses the face the way it looks for it. The
profiles live in ``configs/tools.yaml``; operators add or replace profiles with a YAML file of
the same shape named by ``DEEPGUARD_TOOLS_FILE``.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deepguard.errors import DeepguardError
from deepguard.settings import get_settings
from deepguard.tables import builtin_then_operator


class ToolProfile(BaseModel):
    """How one tool looks for faces; see ``configs/tools.yaml`` for the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    detectors: tuple[str, ...] = Field(min_length=1)
    resize: Literal["native", "longest", "halve"] = "native"
    sizes: tuple[int, ...] = ()
    threshold: float | None = Field(None, gt=0, lt=1)
    runs: str = ""
    stand_in: str | None = None
    enabled: bool = True
    #: stand-in → the tool's own detector (its very file, configs/tool_weights.yaml): judged
    #: on that one instead wherever the attack holds it
    own: dict[str, str] = Field(default_factory=dict)
    #: stand-in → a nearer stand-in (the tool's own file is not public) used where attacked
    closer: dict[str, str] = Field(default_factory=dict)
    #: how this profile is judged: "own weights", or the stand-in note (set by
    #: :meth:`judged_with`)
    weights: str = ""

    @model_validator(mode="after")
    def _check(self) -> ToolProfile:
        if self.resize != "native" and not self.sizes:
            raise ValueError(f"resize {self.resize!r} needs sizes")
        if any(size < 16 for size in self.sizes):
            raise ValueError("sizes must be at least 16 pixels")
        return self

    def scales(self, height: int, width: int) -> list[float]:
        """The factors by which a ``height``×``width`` picture reaches this tool's detector."""
        longest = max(height, width)
        if self.resize == "native":
            return [1.0]
        if self.resize == "halve":
            size = self.sizes[0]
            return [size / longest if longest >= 2 * size else 0.5]
        return [size / longest for size in self.sizes]

    def judged_with(self, attacked: Collection[str]) -> ToolProfile:
        """This profile as a run judges it: each stand-in replaced by the tool's own
        detector, or by a nearer stand-in, where ``attacked`` holds that one (a tool is judged
        on what the attack aims at, so its coverage does not depend on which files are here);
        ``weights`` says which."""
        detectors, own = [], []
        for name in self.detectors:
            if self.own.get(name) in attacked:
                detectors.append(self.own[name])
                own.append(self.own[name])
            elif self.closer.get(name) in attacked:
                detectors.append(self.closer[name])
            else:
                detectors.append(name)
        stand_ins = [n for n in detectors if n not in own]
        if not stand_ins:
            note, stand_in = "own weights", None
        elif own:
            note = f"own weights ({', '.join(own)}); stand-in for the rest: {', '.join(stand_ins)}"
            stand_in = self.stand_in
        else:
            note, stand_in = f"stand-in: {', '.join(stand_ins)}", self.stand_in
        return self.model_copy(
            update={"detectors": tuple(detectors), "weights": note, "stand_in": stand_in}
        )

    def describe_resize(self) -> str:
        """For reports: "native", "longest side to 128 and 640", ..."""
        if self.resize == "native":
            return "native size"
        if self.resize == "halve":
            return f"longest side to {self.sizes[0]} from {2 * self.sizes[0]} up, else half size"
        return "longest side to " + " and ".join(str(size) for size in self.sizes)


def _parse(table: object, source: str) -> dict[str, ToolProfile]:
    if not isinstance(table, dict) or not isinstance(table.get("tools"), dict):
        raise DeepguardError(f"{source}: expected a mapping with a 'tools:' table")
    profiles = {}
    for name, entry in table["tools"].items():
        try:
            profiles[name] = ToolProfile.model_validate({"name": name, **(entry or {})})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise DeepguardError(f"{source}: tool profile {name!r}: {problems}") from None
    return profiles


@cache
def _profiles_from(extra: Path | None) -> dict[str, ToolProfile]:
    profiles: dict[str, ToolProfile] = {}
    for table, source in builtin_then_operator("tools.yaml", extra, "DEEPGUARD_TOOLS_FILE"):
        profiles.update(_parse(table, source))
    return profiles


def tool_profiles() -> dict[str, ToolProfile]:
    """Every profile, built in and the operator's, in file order (disabled ones included)."""
    return _profiles_from(get_settings().tools_file)


def judged_profiles(
    names: list[str] | None, extra: list[str] | None, attacked: Collection[str]
) -> list[ToolProfile]:
    """:func:`enabled_profiles`, each as a run attacking ``attacked`` judges it
    (:meth:`ToolProfile.judged_with`)."""
    return [profile.judged_with(attacked) for profile in enabled_profiles(names, extra)]


def enabled_profiles(
    names: list[str] | None = None, extra: list[str] | None = None
) -> list[ToolProfile]:
    """The profiles a result is judged under: ``names`` (all enabled ones when ``None``),
    plus ``extra`` ones a preset adds (a profile off by default, such as
    ``insightface-defaults`` in ``strong``)."""
    profiles = tool_profiles()
    unknown = [name for name in [*(names or []), *(extra or [])] if name not in profiles]
    if unknown:
        raise DeepguardError(
            f"unknown tool profile(s) {', '.join(unknown)}; known: {', '.join(profiles)}"
        )
    if names is None:
        chosen = [name for name, profile in profiles.items() if profile.enabled]
    else:
        chosen = list(names)
    if names is None or names:  # an explicit empty list (``--tools none``) stays empty
        chosen += [name for name in extra or [] if name not in chosen]
    return [profiles[name] for name in chosen]
