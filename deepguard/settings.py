"""Runtime configuration from environment variables and ``.env`` (pydantic-settings).

Every knob an operator may need lives here, so the CLI, the pipeline and the web service
read one source of truth. Names follow the environment variables documented in
``.env.example``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from deepguard.errors import SettingsError


class Settings(BaseSettings):
    """deepguard settings; see ``.env.example`` for every variable."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"),
        validation_alias=AliasChoices("DEEPGUARD_DATA_DIR"),
        description="Uploads, results, job store and reports.",
    )
    weights_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPGUARD_WEIGHTS_DIR"),
        description="Read-only folder searched first for detector weights.",
    )
    weights_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "deepguard",
        validation_alias=AliasChoices("DEEPGUARD_WEIGHTS_CACHE"),
        description="Writable cache where downloaded weights are kept.",
    )
    weights_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPGUARD_WEIGHTS_BASE_URL"),
        description="Mirror that serves every weight file by name; overrides upstream URLs.",
    )
    allow_unpinned_weights: bool = Field(
        default=False,
        validation_alias=AliasChoices("DEEPGUARD_ALLOW_UNPINNED_WEIGHTS"),
        description="Accept downloads of weights that have no sha256 pinned in detectors.yaml.",
    )
    tools_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPGUARD_TOOLS_FILE"),
        description="Extra tool profiles (YAML, the shape of configs/tools.yaml).",
    )
    download_timeout_s: float = Field(
        default=60.0, validation_alias=AliasChoices("DEEPGUARD_DOWNLOAD_TIMEOUT")
    )
    tool_weights: bool = Field(
        default=True,
        validation_alias=AliasChoices("DEEPGUARD_TOOL_WEIGHTS"),
        description="Before the first job, fetch the face-swap tools' own detector files the "
        "preset attacks (configs/tool_weights.yaml); off: judge on what is here already.",
    )
    tool_weights_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPGUARD_TOOL_WEIGHTS_FILE"),
        description="Extra or replacement entries for the tools' detector files (YAML, the "
        "shape of configs/tool_weights.yaml).",
    )
    tool_weights_timeout_s: float = Field(
        default=5.0,
        gt=0,
        validation_alias=AliasChoices("DEEPGUARD_TOOL_WEIGHTS_TIMEOUT"),
        description="Seconds the first-use fetch waits for a silent network before the run "
        "goes on with stand-ins.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", validation_alias=AliasChoices("DEEPGUARD_DEVICE")
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto",
        validation_alias=AliasChoices("DEEPGUARD_PRECISION"),
        description="Detector passes of the attack under autocast: auto is fp16 on CUDA, fp32 "
        "on CPU. A preset's or the API's own precision wins; verification is always fp32.",
    )
    gpu_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        validation_alias=AliasChoices("DEEPGUARD_GPU_SHARE"),
        description="Share of a GPU per attack actor on Ray: 1/share actors per card (0.25: "
        "four). A video's poison actors split 90 % of each card, the rest is kept for its "
        "tracking and smoothing actors.",
    )
    max_image_pixels: int = Field(
        default=80_000_000,
        validation_alias=AliasChoices("DEEPGUARD_MAX_IMAGE_PIXELS"),
        description="Refuse images larger than this (decompression-bomb guard).",
    )
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("RAY_ADDRESS"))
    job_db: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPGUARD_JOB_DB"),
        description="SQLite job store (default: DEEPGUARD_DATA_DIR/jobs.sqlite3).",
    )
    watch_concurrency: int = Field(
        default=1, ge=1, validation_alias=AliasChoices("DEEPGUARD_WATCH_CONCURRENCY")
    )
    watch_stable_seconds: float = Field(
        default=2.0,
        ge=0,
        validation_alias=AliasChoices("DEEPGUARD_WATCH_STABLE_SECONDS"),
        description="A dropped file is complete once its size and mtime held this long.",
    )
    retention_hours: float = Field(
        default=24.0, gt=0, validation_alias=AliasChoices("DEEPGUARD_RETENTION_HOURS")
    )
    archived_reports: int = Field(
        default=100, ge=0, validation_alias=AliasChoices("DEEPGUARD_ARCHIVED_REPORTS")
    )
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("HOST"))
    port: int = Field(default=5000, validation_alias=AliasChoices("PORT"))
    preferred_url_scheme: Literal["http", "https"] = Field(
        default="http", validation_alias=AliasChoices("PREFERRED_URL_SCHEME")
    )
    root_path: str = Field(
        default="",
        validation_alias=AliasChoices("DEEPGUARD_ROOT_PATH"),
        description="Path prefix when served behind a reverse proxy, e.g. /deepguard.",
    )
    public_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPGUARD_PUBLIC_URL"),
        description="Base URL put in result links and QR codes (default: from the request).",
    )
    api_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEEPGUARD_API_TOKEN"),
        description="Bearer token the dashboard and API require; needed to bind beyond localhost.",
    )
    max_upload_mb: float = Field(
        default=500, gt=0, validation_alias=AliasChoices("DEEPGUARD_MAX_UPLOAD_MB")
    )
    web_concurrency: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("DEEPGUARD_WEB_CONCURRENCY"),
        description="Dashboard jobs processed at once; more wait in the queue.",
    )
    web_max_queue: int = Field(
        default=16,
        ge=1,
        validation_alias=AliasChoices("DEEPGUARD_WEB_MAX_QUEUE"),
        description="Dashboard jobs waiting at most; further submissions are refused (429).",
    )

    @property
    def job_db_path(self) -> Path:
        return self.job_db or self.data_dir / "jobs.sqlite3"

    def resolved_device(self) -> str:
        """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once; a bad value is a :class:`SettingsError` that names
    the variable, so the user reads one line instead of pydantic's report."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(settings_problems(error)) from None


def settings_problems(error: ValidationError) -> str:
    """``DEEPGUARD_X='abc': input should be …`` for every bad variable, on one line."""
    problems = []
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"]) or "settings"
        value = problem.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        message = problem["msg"][:1].lower() + problem["msg"][1:]
        problems.append(f"{name}{shown}: {message}")
    return "bad setting: " + "; ".join(problems)
