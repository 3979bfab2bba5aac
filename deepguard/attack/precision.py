"""Mixed precision for the attack's detector passes.

On a GPU the detectors' forward and backward passes are nearly all of the attack's time, and
half precision runs them on the tensor cores. Only those passes are autocast, and only for
detectors that declare themselves stable under it (:attr:`FaceDetector.autocast_safe`). The
losses, the perturbation, its momentum and the sign step stay fp32, and so does every pass
whose result is reported (faces counted before and after): the verdict does not depend on
the precision.

fp16 gradients come from a scaled loss, so that small ones do not flush to zero (the
per-detector gradient is normalised afterwards, so the scale cancels); a pass whose scaled
gradient overflows is run again in fp32, and that detector's scale is lowered.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from deepguard.errors import DeepguardError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: measured on RetinaFace (640 px, CPU fp16 autocast): with the loss scaled by 256, 0.6 % of
#: the input gradient is exactly zero instead of 4 % unscaled (fp32: 0.1 %); 4096 overflowed
FP16_LOSS_SCALE = 256.0


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` is fp16 on CUDA and fp32 elsewhere (CPUs gain little from half precision and
    most lack fast fp16); an explicit choice is kept."""
    if precision not in PRECISIONS:
        raise DeepguardError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return precision


class Autocast:
    """The autocast contexts of one attack: its device and resolved precision."""

    def __init__(self, precision: str, device: torch.device | str) -> None:
        self.device_type = torch.device(device).type
        self.name = resolve_precision(precision, device)
        self.dtype = _DTYPES.get(self.name)
        self.loss_scale = FP16_LOSS_SCALE if self.dtype is torch.float16 else 1.0

    def applies_to(self, detector: object) -> bool:
        """Half precision for this detector's attack passes?"""
        return self.dtype is not None and getattr(detector, "autocast_safe", True)

    def forward(self, detector: object, enabled: bool = True) -> AbstractContextManager:
        """The context for one of ``detector``'s attack passes: autocast where it applies,
        otherwise explicitly fp32 (so an unsafe detector stays fp32 inside a caller's
        autocast too)."""
        if enabled and self.applies_to(detector):
            return torch.autocast(self.device_type, dtype=self.dtype)
        return self.fp32()

    def fp32(self) -> AbstractContextManager:
        """Autocast off: for every pass whose result is reported."""
        return torch.autocast(self.device_type, enabled=False)
