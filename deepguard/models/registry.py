"""Detector registry: names → how to build each detector and which weight files it needs.

The table lives in ``configs/detectors.yaml`` so an operator can re-point or re-pin weights
without touching code. Built detectors are cached per (name, device): they are frozen, in
eval mode, and safe to share between attack runs in one process.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from deepguard.errors import DeepguardError
from deepguard.models.base import FaceDetector
from deepguard.models.catalogue import tool_weights
from deepguard.models.store import WeightFile, WeightStore


class UnknownDetectorError(DeepguardError):
    """A detector name that is not in the registry."""


@dataclass(frozen=True)
class DetectorSpec:
    """One registry entry from ``configs/detectors.yaml``."""

    name: str
    description: str
    factory: str
    files: tuple[WeightFile, ...]
    options: dict[str, Any] = field(default_factory=dict)
    shipped: bool = True
    manifest: str | None = None
    #: terms of the weights where they restrict use (e.g. non-commercial only); shown by
    #: ``deepguard models list``. Such weights are never bundled into an image.
    licence: str | None = None

    def build(self, weights: dict[str, Path] | None) -> FaceDetector:
        """Instantiate the detector; ``weights=None`` gives random initialisation."""
        module_name, _, function_name = self.factory.partition(":")
        factory = getattr(importlib.import_module(module_name), function_name)
        detector = factory(weights, **self.options)
        detector.eval().requires_grad_(False)
        return detector


def _weight_file(entry: dict[str, Any]) -> WeightFile:
    """A ``files:`` entry: pinned here, or ``{catalogue: NAME}``, one of the tools' own files
    pinned (with its size and sources) in ``configs/tool_weights.yaml``."""
    if "catalogue" in entry:
        return tool_weights()[entry["catalogue"]].file
    return WeightFile(**entry)


@cache
def detector_specs() -> dict[str, DetectorSpec]:
    """All registry entries, in the order of ``configs/detectors.yaml``."""
    text = resources.files("deepguard.configs").joinpath("detectors.yaml").read_text("utf-8")
    table = yaml.safe_load(text)["detectors"]
    return {
        name: DetectorSpec(
            name=name,
            description=entry["description"],
            factory=entry["factory"],
            files=tuple(_weight_file(file) for file in entry["files"]),
            options=entry.get("options") or {},
            shipped=entry.get("shipped", True),
            manifest=entry.get("manifest"),
            licence=entry.get("licence"),
        )
        for name, entry in table.items()
    }


def get_spec(name: str) -> DetectorSpec:
    specs = detector_specs()
    if name not in specs:
        raise UnknownDetectorError(
            f"unknown detector {name!r}; known detectors: {', '.join(specs)}"
        )
    return specs[name]


_built: dict[tuple[str, str], FaceDetector] = {}
_lock = threading.Lock()


def load_detector(
    name: str, device: str = "cpu", store: WeightStore | None = None, download: bool = True
) -> FaceDetector:
    """A ready detector on ``device`` with verified weights (downloaded once if needed)."""
    key = (name, str(device))
    with _lock:
        if key not in _built:
            spec = get_spec(name)
            store = store or WeightStore()
            weights = {file.name: store.resolve(file, download=download) for file in spec.files}
            detector = spec.build(weights).to(device)
            if detector.channels_last_on_cpu and torch.device(device).type == "cpu":
                # convolutions follow their weights' layout: the inputs stay as they are
                detector.to(memory_format=torch.channels_last)
            _built[key] = detector
        return _built[key]


def load_detectors(names: list[str], device: str = "cpu") -> list[FaceDetector]:
    return [load_detector(name, device) for name in names]
