"""What one attack pass costs with each of the tools' own detectors, on this machine.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/tool_detectors.py
         [--size 640] [--repeats 5] [--graph yoloface_8n=PATH ...]

One pass is the attack's (bench/passes.py): the forward and the backward of the face loss
with respect to the input, on a press photo shrunk to ``--size`` on its long side. The
stand-ins (SCRFD-500M, YOLO5Face n-0.5, RetinaFace-MobileNet) run in the same process as the
reference. The nets defined in code (RetinaFace-ResNet-50, face_alignment's S3FD) time the
same with random weights of the published shapes; the graph-defined ones (SCRFD-10G,
yoloface_8n, FaceFusion's RetinaFace-10G) need their ONNX file: the catalogue's file when it
is here, or ``--graph NAME=PATH`` (a graph of the same architecture, e.g. an ultralytics
YOLOv8n export with five keypoints for yoloface_8n). Prints the median seconds per pass and
the ratio to SCRFD-500M.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from deepguard.models.catalogue import by_detector, present
from deepguard.models.registry import get_spec, load_detector
from deepguard.models.retinaface_r50.predictor import load as load_r50
from deepguard.models.s3fd_fan.predictor import load as load_s3fd
from deepguard.models.scrfd.predictor import load as load_scrfd
from deepguard.models.yoloface.predictor import load as load_yoloface

# python bench/tool_detectors.py puts bench/ first on the path
from passes import one_pass, view  # isort: skip

STAND_INS = ["scrfd_500m", "yolo5face_n05", "retinaface"]
RANDOM = {"retinaface_r50": lambda: load_r50(None), "s3fd_fan": lambda: load_s3fd(None)}
GRAPHS = {
    "scrfd_10g": lambda path: load_scrfd({path.name: path}, file=path.name, name="scrfd_10g"),
    "retinaface_10g": lambda path: load_scrfd(
        {path.name: path}, file=path.name, name="retinaface_10g", channels="bgr"
    ),
    "yoloface_8n": lambda path: load_yoloface({path.name: path}, file=path.name),
}


def timed(detector, x: torch.Tensor, repeats: int) -> float:
    one_pass(detector, x)  # warm-up: allocations, the converter's first call
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass(detector, x)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--graph", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    x = view(args.size)
    graphs = {name: Path(path) for name, _, path in (g.partition("=") for g in args.graph)}
    here = present()
    rows: list[tuple[str, str, float | None]] = []
    for name in STAND_INS:
        rows.append((name, "stand-in, real weights", timed(load_detector(name), x, args.repeats)))
    for name, build in RANDOM.items():
        how = "own weights" if name in here else "random weights, published shapes"
        detector = load_detector(name) if name in here else build()
        rows.append((name, how, timed(detector, x, args.repeats)))
    for name, build in GRAPHS.items():
        if name in graphs:
            rows.append((name, f"graph {graphs[name].name}", timed(build(graphs[name]), x,
                                                                    args.repeats)))  # fmt: skip
        elif name in here:
            rows.append((name, "own weights", timed(load_detector(name), x, args.repeats)))
        else:
            file = by_detector()[name].file.name
            rows.append((name, f"not measured: {file} is not here", None))
    reference = rows[0][2]
    threads = torch.get_num_threads()
    print(f"one attack pass (forward + backward) at {args.size} px on the long side "
          f"({tuple(x.shape[-2:])}), median of {args.repeats}, {threads} threads")  # fmt: skip
    print(f"{'detector':<16} {'s / pass':>9} {'× SCRFD-500M':>13}  what ran")
    for name, how, seconds in rows:
        cells = (f"{seconds:9.3f} {seconds / reference:13.2f}" if seconds is not None
                 else f"{'–':>9} {'–':>13}")  # fmt: skip
        print(f"{name:<16} {cells}  {how} ({get_spec(name).description[:60]})")


if __name__ == "__main__":
    main()
