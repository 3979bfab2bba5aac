"""The JSON the dashboard reads: a job with its live progress and result, and the catalogue of
presets and detectors. Kept apart from the routes so both the HTTP and the WebSocket API send
the same shapes."""

from __future__ import annotations

from importlib import resources
from typing import Any

from deepguard.attack.config import load_preset, preset_names
from deepguard.models.registry import detector_specs
from deepguard.models.store import WeightStatus, WeightStore
from deepguard.pipeline.jobs import FINAL_STATES, Job
from deepguard.web.runner import LiveProgress

_USABLE = (WeightStatus.AVAILABLE, WeightStatus.UNPINNED)


def preset_catalogue() -> dict[str, dict[str, Any]]:
    """Each preset's headline settings and the first line of its YAML comment."""
    presets = {}
    for name in preset_names():
        config = load_preset(name)
        text = resources.files("deepguard.configs").joinpath("presets", f"{name}.yaml")
        first = text.read_text().splitlines()[0].lstrip("# ")
        presets[name] = {
            "summary": first.partition(": ")[2] or first,
            "detectors": config.detectors,
            "epsilon": config.epsilon,
            "iterations": config.iterations,
            "region_mode": config.region_mode,
        }
    return presets


def detector_catalogue() -> list[dict[str, Any]]:
    """Every registered detector and whether its weights are here to use."""
    store = WeightStore()
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "available": all(store.status(file)[0] in _USABLE for file in spec.files),
        }
        for spec in detector_specs().values()
    ]


def result_card(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The verdict for the result card, the same shape for an image and a clip."""
    if not report:
        return None
    summary = report.get("summary", report)
    detectors = {
        name: {"faces_before": d["faces_before"], "faces_after": d["faces_after"]}
        for name, d in summary["detectors"].items()
    }
    tools = [_tool_line(row) for row in summary.get("tools", [])]
    card = {
        "kind": report["kind"],
        "detectors": detectors,
        "tools": tools,
        "verdict": _verdict(tools),
        "hidden": all(d["faces_after"] == 0 for d in detectors.values()),
        "psnr_db": summary.get("psnr_db"),
        "seconds": summary.get("seconds") or report.get("timings_s", {}).get("total"),
        "epsilon": summary.get("epsilon"),
        "faces": [_face_line(face, tools) for face in report.get("faces", [])],
    }
    if report["kind"] == "video":
        card.update(
            frames=report["video"]["frames"],
            fps=report["video"]["fps"],
            flicker=summary.get("flicker"),
            realtime_factor=summary.get("realtime_factor"),
        )
    else:
        card["frames"] = 1
    return card


def _verdict(tools: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The card's headline speaks of the tools, as its table does: the titles of the tools
    the result is protected against, those it is not, and those the chosen detectors do not
    cover (a result can hide every face from its detectors and still not protect against a
    tool that runs another one)."""
    groups: dict[str, list[str]] = {
        "protected": [], "not_protected": [], "not_covered": [], "no_faces": []
    }  # fmt: skip
    key = {"protected": "protected", "not protected": "not_protected",
           "not covered": "not_covered", "no faces found": "no_faces"}  # fmt: skip
    for tool in tools:
        groups[key.get(tool["status"], "not_covered")].append(tool["title"])
    return groups


def _face_line(face: dict[str, Any], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One protected face of a photo: the ε it got, its crop's quality, and per delivery the
    tools (by title) that still find it."""
    titles = {tool["tool"]: tool["title"] for tool in tools}
    return {
        "epsilon": face.get("epsilon"),
        "texture_floor_lifted": face.get("texture_floor_lifted", False),
        "psnr_db": face.get("psnr_db"),
        "ssim": face.get("ssim"),
        "deliveries": {
            chain: {
                "protected_against": len(entry["protected_against"]),
                "found_by": [titles.get(name, name) for name in entry["found_by"]],
            }
            for chain, entry in face.get("deliveries", {}).items()
        },
    }


def _tool_line(row: dict[str, Any]) -> dict[str, Any]:
    """One tool on the card: faces before → after, per delivery (the saved file, a shared
    copy...) and the verdict; ``stand_in`` says which of our detectors stands for the tool's
    own where its weights cannot be had."""
    keys = ("tool", "title", "faces_before", "faces_after", "deliveries", "status", "stand_in",
            "weights")  # fmt: skip
    return {key: row.get(key) for key in keys}


def job_view(job: Job, live: LiveProgress | None, page_url: str) -> dict[str, Any]:
    """A job as the API and the WebSocket send it."""
    upload = job.parameters.get("upload", {})
    base = f"api/jobs/{job.id}"
    view = {
        "id": job.id,
        "state": job.state.value,
        "final": job.state in FINAL_STATES,
        "kind": job.kind,
        "name": upload.get("name"),
        "media": {
            key: upload.get(key)
            for key in ("width", "height", "frames", "fps", "duration_s", "bytes")
        },
        "options": {
            key: job.parameters.get(key)
            for key in ("preset", "detectors", "epsilon", "iterations", "region_mode")
        },
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "error": job.error,
        "progress": {"fraction": job.progress, "phases": {}, "detectors": {}, "eta_s": None},
        "estimate": job.parameters.get("estimate"),
        "result": result_card(job.report),
        "page_url": page_url,
        "links": {
            "original": f"{base}/original",
            "protected": f"{base}/protected",
            "download": f"{base}/protected?download=1",
            "report": f"{base}/report",
            "qr": f"{base}/qr.svg",
            "frame": f"{base}/frames/{{index}}.png?which={{which}}",
        },
    }
    if live is not None and not view["final"]:
        view["progress"] = live.as_dict()
    return view
