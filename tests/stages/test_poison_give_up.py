"""Which detectors a scene gives up on after its key frame's full attack."""

from __future__ import annotations

import numpy as np
import torch

from deepguard.attack.core import AttackResult
from deepguard.stages.poison import _detectors_to_give_up


def test_a_scene_gives_up_only_on_detectors_that_lost_no_face_and_did_not_move() -> None:
    result = AttackResult(
        frames=np.zeros((1, 4, 4, 3), np.uint8),
        delta=torch.zeros(1, 3, 4, 4),
        faces_before={
            "retinaface": [4],
            "mtcnn": [1],
            "yunet": [1],
            "faceboxes": [0],
            "scrfd_500m": [1],
        },
        faces_after={
            "retinaface": [1],
            "mtcnn": [1],
            "yunet": [0],
            "faceboxes": [0],
            "scrfd_500m": [1],
        },
        loss_drop={"retinaface": 0.9, "mtcnn": 0.1, "yunet": 1.0, "scrfd_500m": 0.8},
    )
    # RetinaFace lost 3 of 4 faces: the warm frames keep attacking it (giving up on it left
    # it finding 143 of 186 faces on a 1080p clip); MTCNN lost none: refining it is wasted
    # SCRFD still finds its one face, but its loss fell by 80 %: the warm frames go on
    assert _detectors_to_give_up(result, stalled_below=0.5) == {"mtcnn"}
