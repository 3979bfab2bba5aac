"""Passes spent only where a face is still found: the cheap check trusts fresh peaks only, a
check looks first where faces were found, the chain that fails is drawn more, a shrink that
shrank nothing checks nothing, and every pass is counted by kind."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deepguard.attack.config import load_preset
from deepguard.attack.core import FacePoison, _pairs_to_check
from deepguard.attack.delivery import CHAINS
from deepguard.attack.optimiser import Optimiser, Plan
from deepguard.attack.verification import Look
from deepguard.pipeline.protect import Protector
from tests.conftest import read_rgb

LOOKS = [Look("scrfd_500m", 0.4, 0.5, False, ("roop",), (0.5,)),
         Look("retinaface", 1.0, 0.5, False, ("wav2lip",), (0.5,))]  # fmt: skip


def _run(**fields) -> SimpleNamespace:
    plans = [Plan(CHAINS["saved"], (100, 100), LOOKS), Plan(CHAINS["sns"], (100, 100), LOOKS)]
    detectors = [SimpleNamespace(name="scrfd_500m"), SimpleNamespace(name="retinaface")]
    base = {"plans": plans, "detectors": detectors, "peaks": {}, "peaks_at": {},
            "checked_at": -1, "failing": set(), "iterations": 0,
            "rng": random.Random(0)}  # fmt: skip
    return SimpleNamespace(**{**base, **fields})


def _optimiser() -> Optimiser:
    return Optimiser(load_preset("balanced"), {}, None)  # type: ignore[arg-type]


def test_the_cheap_check_trusts_only_peaks_measured_since_the_last_check() -> None:
    optimiser = _optimiser()
    pairs = [(chain, look) for chain in ("saved", "sns") for look in LOOKS]
    low = {pair: 0.1 for pair in pairs}
    run = _run(peaks=dict(low), peaks_at=dict.fromkeys(pairs, 5), checked_at=3)
    assert optimiser.looks_clear(run)  # all four drawn since the check at 3, all low
    run.checked_at = 5  # a check after them: they say nothing about the perturbation now
    assert not optimiser.looks_clear(run)
    del run.peaks_at[pairs[-1]], run.peaks[pairs[-1]]  # a look never drawn has no say yet
    run.checked_at = 3
    assert not optimiser.looks_clear(run)
    run.peaks_at[pairs[-1]], run.peaks[pairs[-1]] = 6, 0.45  # above 0.8 × 0.5
    assert not optimiser.looks_clear(run)


def test_the_failing_chain_is_drawn_more() -> None:
    optimiser = _optimiser()
    run = _run()
    assert [optimiser._draw_plan(run).chain.name for run.iterations in range(4)] == [
        "saved", "sns", "saved", "sns"]  # fmt: skip
    run.checked_at, run.failing = 4, {("sns", LOOKS[0]), ("sns", LOOKS[1])}
    drawn = Counter(optimiser._draw_plan(run).chain.name for _ in range(3000))
    assert 2.4 < drawn["sns"] / drawn["saved"] < 3.6  # weights 1 + 2 against 1 + 0


def test_a_check_looks_first_where_faces_were_found() -> None:
    run = _run()
    assert _pairs_to_check(run, 0) is None  # the first check: every pair
    run.checked_at, run.failing = 4, {("sns", LOOKS[1])}
    first, second = _pairs_to_check(run, 1), _pairs_to_check(run, 2)
    assert ("sns", LOOKS[1]) in first and ("sns", LOOKS[1]) in second
    assert len(first) < 4 and first != second  # a third of the others, in turn
    everything = {(c, look) for c in ("saved", "sns") for look in LOOKS}
    run.failing = everything
    assert _pairs_to_check(run, 1) is None  # most of them anyway: a full check


@pytest.fixture(scope="module")
def portrait(media_dir: Path) -> np.ndarray:
    return read_rgb(media_dir / "lp_s12.jpg")[None]


def test_checks_look_first_where_faces_were_found_and_rounds_end_on_a_full_verdict(
    portrait: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_preset("balanced", detectors=["retinaface", "yunet"],
                         tools=["faceswap", "wav2lip", "deepfacelab"])  # fmt: skip
    attack = FacePoison(config)
    calls: list[int | None] = []  # the pairs of each check (None: all of them)
    real_check = FacePoison.check

    def observed(self, run, scale=1.0, kind="check", pairs=None):
        if kind == "check":
            calls.append(None if pairs is None else len(pairs))
        return real_check(self, run, scale, kind, pairs)

    monkeypatch.setattr(FacePoison, "check", observed)
    result = attack.protect(portrait)
    full = attack._check_passes(portrait, attack.chains)
    assert any(count is not None for count in calls), "no partial check: nothing saved"
    assert calls[-1] is None  # the verdict is a full check
    spent = sum(full if count is None else count for count in calls)
    assert result.passes_by_kind["check"] == spent < len(calls) * full
    assert result.after is not None and set(result.after.found) == {"saved", "sns"}


def test_a_shrink_that_shrinks_nothing_checks_nothing_more(
    portrait: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every smaller scale lets the face be found again: the bisection keeps full strength,
    and the verdict at full strength is already known: no final check."""
    import torch

    from deepguard.attack.regions import Window

    attack = FacePoison(load_preset("balanced", detectors=["yunet"], tools=[], shrink_steps=2))
    faces, _ = attack.faces_of(portrait)
    height, width = portrait.shape[1:3]
    budgets = attack._budgets(portrait, faces, [Window(0, 0, 0, width, height)])
    at_full_strength = SimpleNamespace()
    found_again = {("yunet@1", "saved", 0, 0)}
    monkeypatch.setattr(attack, "failures", lambda verdict, active, margin=1.0: (
        set() if verdict is at_full_strength else found_again))  # fmt: skip
    kinds: list[str] = []
    monkeypatch.setattr(attack, "check", lambda run, scale=1.0, kind="check", pairs=None: (
        kinds.append(kind) or SimpleNamespace()))  # fmt: skip
    run = SimpleNamespace(perturbation=SimpleNamespace(value=lambda: 0, shared=False),
                          x=torch.zeros(1, 3, height, width))  # fmt: skip
    assert attack._shrink(run, at_full_strength, ["yunet"], budgets) is at_full_strength
    assert kinds == ["shrink", "shrink"]  # the two bisection steps, no final check


def test_a_photos_report_counts_every_pass_by_kind(portrait: np.ndarray, tmp_path: Path,
                                                   media_dir: Path) -> None:  # fmt: skip
    config = load_preset("balanced", detectors=["retinaface"], iterations=2, repair_rounds=0,
                         shrink_steps=1)  # fmt: skip
    report = Protector(config).protect(media_dir / "lp_s12.jpg", tmp_path / "out.png")
    kinds = report["detector_passes_by_kind"]
    # the tools' detectors outside the ensemble judged for the report: SCRFD, YOLO5Face,
    # YuNet and MTCNN looks, on the clean picture and the file, on both chains
    assert kinds["report"] > 0
    assert report["detector_passes"] == sum(kinds.values())
    assert report["detector_passes_backward"] == kinds["attack"] + kinds.get("retry", 0)
