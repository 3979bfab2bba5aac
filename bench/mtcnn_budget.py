"""How large an L∞ budget MTCNN needs before any of its stages gives way on a large face.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/mtcnn_budget.py
     [--image lp_s12.jpg] [--epsilons 6,8,12,16] [--steps 100]

MTCNN alone, with no EOT, no codec and no other detector competing for the budget: plain
sign-gradient steps on the face and one face-width of context around it. Five objectives:

- ``cascade``: every stage at once, as deepguard attacks it;
- ``pnet``: every P-Net window on every pyramid level under P-Net's gate;
- ``rnet``: every R-Net candidate under R-Net's gate;
- ``onet``: every O-Net candidate under the final threshold;
- ``refiners``: R-Net and O-Net, leaving P-Net's hundreds of windows out of the loss.

MTCNN misses the face only if one stage rejects every candidate. The benchmark prints, per
budget and objective, what is left above each stage's gate after the last step, and whether
MTCNN still finds the face at any checkpoint's end (every 10 steps; the best checkpoint
counts).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepguard.attack.losses import score_suppression_loss
from deepguard.attack.transforms import quantize_uint8
from deepguard.models.mtcnn.predictor import MTCNN
from deepguard.models.registry import load_detector

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media" / "images"
OBJECTIVES = ("cascade", "pnet", "rnet", "onet", "refiners")
CHECK_EVERY = 10


def face_with_context(image: np.ndarray, mtcnn: MTCNN) -> Tensor:
    """The clean picture cut to the faces MTCNN finds plus one face-width on each side."""
    (found,) = mtcnn.detect_batch(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    if not len(found):
        raise SystemExit("MTCNN finds no face in this picture")
    (x1, y1), (x2, y2) = found.boxes[:, :2].min(0), found.boxes[:, 2:].max(0)
    width, height = x2 - x1, y2 - y1
    top, left = int(max(0, y1 - height)), int(max(0, x1 - width))
    bottom, right = int(min(image.shape[0], y2 + height)), int(min(image.shape[1], x2 + width))
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float()


def objective(mtcnn: MTCNN, x: Tensor, name: str) -> tuple[Tensor, dict[str, int]]:
    """The loss to push down, and what is above each stage's gate now."""
    cascade = mtcnn.cascade(x)
    pnet = torch.cat([level.flatten(1) for level in cascade.pnet_maps], dim=1)
    maps = [pnet, cascade.rnet.logits[None], cascade.onet.logits[None]]
    floors = mtcnn.score_floors(0.3)  # P/R-Net at their gates, O-Net at 0.3 × threshold
    stages = {"cascade": [0, 1, 2], "pnet": [0], "rnet": [1], "onet": [2], "refiners": [1, 2]}
    chosen = stages[name]
    loss = score_suppression_loss([maps[i] for i in chosen], [floors[i] for i in chosen])
    gates = mtcnn.thresholds
    left = {
        stage: int((logits.detach().sigmoid() > gate).sum())
        for stage, logits, gate in zip(("pnet", "rnet", "onet"), maps, gates, strict=True)
    }
    return loss, left


def attack(mtcnn: MTCNN, clean: Tensor, epsilon: float, name: str, steps: int) -> dict:
    step = max(0.25, epsilon / 12)
    delta = torch.zeros_like(clean)
    hidden_at = None
    for index in range(1, steps + 1):
        leaf = delta.clone().requires_grad_(True)
        loss, _ = objective(mtcnn, quantize_uint8(clean + leaf), name)
        if loss.requires_grad:
            (gradient,) = torch.autograd.grad(loss, leaf)
            delta = (delta - step * gradient.sign()).clamp(-epsilon, epsilon)
            delta = (clean + delta).clamp(0, 255) - clean
        if index % CHECK_EVERY == 0 and hidden_at is None:
            with torch.no_grad():
                (found,) = mtcnn.detect_batch(quantize_uint8(clean + delta))
            hidden_at = index if not len(found) else None
    with torch.no_grad():
        saved = quantize_uint8(clean + delta)  # what an 8-bit file holds
        _, left = objective(mtcnn, saved, name)
        (found,) = mtcnn.detect_batch(saved)
    best = float(found.scores.max()) if len(found) else 0.0
    return {"left": left, "found": len(found), "best": best, "hidden_at": hidden_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", default="lp_s12.jpg")
    parser.add_argument("--epsilons", default="6,8,12,16")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    mtcnn = load_detector("mtcnn", "cpu")
    image = np.array(Image.open(SHARED / args.image).convert("RGB"))  # writable
    clean = face_with_context(image, mtcnn)
    print(f"torch {torch.__version__}, {args.image}: face and context {tuple(clean.shape[-2:])}, "
          f"{args.steps} sign steps of max(0.25, ε/12), MTCNN alone, no EOT")  # fmt: skip
    print(f"{'ε':>3} {'objective':<9} {'P-Net>0.6':>9} {'R-Net>0.7':>9} {'O-Net>0.7':>9} "
          f"{'faces':>5} {'O-Net best':>10} {'hidden at step':>15} {'s':>5}")  # fmt: skip
    for epsilon in (float(e) for e in args.epsilons.split(",")):
        for name in OBJECTIVES:
            start = time.perf_counter()
            result = attack(mtcnn, clean, epsilon, name, args.steps)
            left, hidden_at = result["left"], result["hidden_at"]
            seconds = time.perf_counter() - start
            print(f"{epsilon:3.0f} {name:<9} {left['pnet']:9d} {left['rnet']:9d} "
                  f"{left['onet']:9d} {result['found']:5d} {result['best']:10.3f} "
                  f"{hidden_at or 'never':>15} {seconds:5.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
