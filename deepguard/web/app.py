"""The dashboard's HTTP and WebSocket API (FastAPI) and the single page that uses it.

Everything the page does goes through the documented API (``/docs``, ``/openapi.json``):
upload → estimate → start a job → follow it over a WebSocket → compare, download, delete.
Every refusal (status 400 and up), ours or FastAPI's own (an unknown path, a wrong method, a
request that fails validation), is JSON ``{"detail": message, "code": code}``, both strings;
the page shows ``detail``, translated by ``code`` where it has a translation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import shutil
from collections.abc import AsyncIterator
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from deepguard import __version__
from deepguard.attack.config import AttackConfig, load_preset
from deepguard.attack.profiles import enabled_profiles
from deepguard.errors import DeepguardError, InputError
from deepguard.models.registry import get_spec
from deepguard.pipeline.jobs import Job, JobStore, new_job_id
from deepguard.pipeline.metrics import Metrics
from deepguard.pipeline.retention import cleanup
from deepguard.settings import Settings, get_settings
from deepguard.web.estimate import estimate
from deepguard.web.media import frame_rgb, png_bytes
from deepguard.web.qr import qr_svg
from deepguard.web.runner import JobRunner, QueueFull
from deepguard.web.uploads import UnsupportedMedia, Upload, UploadStore, UploadTooLarge, valid_id
from deepguard.web.views import detector_catalogue, job_view, preset_catalogue

log = logging.getLogger(__name__)

SESSION_COOKIE = "deepguard_session"
_EVENT_INTERVAL_S = 0.3
_CLEANUP_INTERVAL_S = 3600
_STATIC = resources.files("deepguard.web").joinpath("static")


class ApiError(HTTPException):
    """An HTTP error with a stable ``code`` the page can translate."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, detail)
        self.code = code


class JobRequest(BaseModel):
    """What to protect and how: a preset, optionally with advanced overrides."""

    upload_id: str = Field(description="from POST /api/uploads")
    preset: str = "balanced"
    detectors: list[str] | None = Field(None, description="ensemble; default: the preset's")
    tools: list[str] | None = Field(
        None,
        description="tool profiles to attack and judge under; default: every enabled one; "
        "[]: native sizes only",
    )
    deliver: list[Literal["saved", "q75", "sns", "sns2048"]] | None = Field(
        None,
        min_length=1,
        description="delivery chains the result must hold on; default: the preset's (saved, sns)",
    )
    epsilon: float | None = Field(None, gt=0, le=32, description="L∞ budget, pixel levels")
    iterations: int | None = Field(None, ge=1, le=200)
    region_mode: bool | None = Field(None, description="true: around faces; false: whole frame")


class Session(BaseModel):
    token: str


class Refusal(BaseModel):
    """Every refusal, whatever refused it: a message, and a stable code to translate."""

    detail: str = Field(description="one line, in English")
    code: str = Field(description="e.g. unsupported_type, invalid_options, not_found")
    errors: list[dict[str, Any]] | None = Field(
        None, description="invalid_options from validation: each field's error (loc, msg, type)"
    )


#: documented on every API route (it also replaces FastAPI's own 422 schema)
_REFUSALS: dict[int | str, dict[str, Any]] = {"4XX": {"model": Refusal, "description": "refused"}}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app, with its own job store, runner and metrics (tests build several)."""
    settings = settings or get_settings()
    store = JobStore(settings.job_db_path)
    metrics = Metrics(store)
    uploads = UploadStore(
        settings.data_dir / "uploads",
        int(settings.max_upload_mb * 2**20),
        settings.max_image_pixels,
    )
    results = settings.data_dir / "results"
    # which detectors have weights: hashing every weight file is too slow to redo per request,
    # and the weights do not change under a running service (restart it after a fetch)
    detectors = detector_catalogue()
    available = frozenset(d["name"] for d in detectors if d["available"])
    runner_holder: dict[str, JobRunner] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runner_holder["runner"] = JobRunner(store, settings, metrics)
        janitor = asyncio.create_task(_clean_periodically(settings, store))
        yield
        janitor.cancel()
        runner_holder["runner"].shutdown()

    app = FastAPI(
        title="deepguard",
        version=__version__,
        summary="Protect photos and clips of people against face swaps (FacePoison).",
        root_path=settings.root_path,
        lifespan=lifespan,
    )
    app.state.settings = settings  # for tools that drive the app in-process (bench/fuzz_upload)

    def runner() -> JobRunner:
        return runner_holder["runner"]

    # -- errors ---------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"detail": error.detail, "code": error.code}, error.status_code)

    @app.exception_handler(DeepguardError)
    async def _deepguard_error(_request: Request, error: DeepguardError) -> JSONResponse:
        status, code = _status_of(error)
        return JSONResponse({"detail": str(error), "code": code}, status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        """Routing's own refusals (no such path, wrong method) in the same shape."""
        body = {"detail": str(error.detail), "code": _code_of(error.status_code)}
        return JSONResponse(body, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        """A wrong type, an out-of-range option or a body that is not JSON: one line in
        ``detail``, and each field's error in ``errors``."""
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in error.errors()
        ]
        body = {"detail": _summary(errors), "code": "invalid_options", "errors": errors}
        return JSONResponse(jsonable_encoder(body), 422)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, _error: Exception) -> JSONResponse:
        """A bug: the shape holds, the details stay in the server's log."""
        return JSONResponse({"detail": "internal server error", "code": "internal_error"}, 500)

    # -- authentication -------------------------------------------------------------------

    # the session cookie is an HMAC of the token under a key this process draws: a stolen
    # cookie does not reveal the token, and a restart signs every browser out
    session_key = secrets.token_bytes(32)

    def session_value(token: str) -> str:
        return hmac.new(session_key, token.encode(), hashlib.sha256).hexdigest()

    def authorized(headers: Any, cookies: dict[str, str]) -> bool:
        if not settings.api_token:
            return True
        header = headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return _same(header[7:].strip(), settings.api_token)
        cookie = cookies.get(SESSION_COOKIE)
        return cookie is not None and _same(cookie, session_value(settings.api_token))

    def require_token(request: Request) -> None:
        if not authorized(request.headers, request.cookies):
            raise ApiError(401, "unauthorized", "an API token is required (DEEPGUARD_API_TOKEN)")

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=_REFUSALS)
    public = APIRouter(prefix="/api", responses=_REFUSALS)

    # -- public endpoints -----------------------------------------------------------------

    @public.get("/health", summary="Liveness: the service answers and its job store opens")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "jobs": store.counts()}

    @public.get("/config", summary="What the page needs before anything else")
    def config() -> dict[str, Any]:
        return {
            "version": __version__,
            "auth_required": bool(settings.api_token),
            "max_upload_mb": settings.max_upload_mb,
            "presets": preset_catalogue(),
            "detectors": detectors,
        }

    @public.post("/session", summary="Exchange the API token for a session cookie (browsers)")
    def session(body: Session, response: Response) -> dict[str, bool]:
        if not settings.api_token or not _same(body.token, settings.api_token):
            raise ApiError(401, "unauthorized", "wrong API token")
        response.set_cookie(
            SESSION_COOKIE,
            session_value(settings.api_token),
            httponly=True,
            samesite="strict",
            secure=settings.preferred_url_scheme == "https",
            path=settings.root_path or "/",
        )
        return {"ok": True}

    # -- uploads and options --------------------------------------------------------------

    @api.post(
        "/uploads",
        status_code=201,
        summary="Upload an image or clip as the raw request body",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload(
        request: Request,
        name: Annotated[str | None, Query(description="the original file name (metadata)")] = None,
    ) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > uploads.max_bytes:
            raise UploadTooLarge(
                f"the file is larger than the limit of {settings.max_upload_mb:g} MB"
            )
        saved = await uploads.save(name, request.stream())
        return saved.as_dict()

    @api.get("/estimate", summary="Expected processing time for an upload and options")
    def estimate_time(
        upload_id: str,
        preset: str = "balanced",
        detectors: Annotated[str | None, Query(description="comma-separated")] = None,
        epsilon: float | None = None,
        iterations: int | None = None,
        region_mode: bool | None = None,
    ) -> dict[str, Any]:
        names = [n for n in (detectors or "").split(",") if n] or None
        try:  # the bounds of POST /api/jobs hold here too
            request = JobRequest(
                upload_id=upload_id,
                preset=preset,
                detectors=names,
                epsilon=epsilon,
                iterations=iterations,
                region_mode=region_mode,
            )
        except ValidationError as error:
            raise RequestValidationError(error.errors(include_url=False)) from None
        upload, config = resolve(request)
        return expected(upload, config).as_dict()

    def resolve(request: JobRequest) -> tuple[Upload, AttackConfig]:
        try:
            upload = uploads.get(request.upload_id)
        except KeyError:
            raise ApiError(404, "upload_not_found", "upload not found (expired?)") from None
        config = load_preset(
            request.preset,
            detectors=request.detectors,
            tools=request.tools,
            deliver=request.deliver,
            epsilon=request.epsilon,
            iterations=request.iterations,
            region_mode=request.region_mode,
        )
        enabled_profiles(config.tools, config.extra_tools)  # an unknown tool is refused
        for name in config.detectors:
            get_spec(name)  # an unknown name is refused with the list of known ones
            if name not in available:
                raise ApiError(
                    400,
                    "weights_missing",
                    f"the weights of {name} are not installed on this server",
                )
        return upload, config

    def expected(upload: Upload, config: AttackConfig):
        media = upload.media
        return estimate(
            store,
            media.kind,
            media.width,
            media.height,
            media.frames,
            config,
            settings.resolved_device(),
        )

    # -- jobs -----------------------------------------------------------------------------

    def page_url(request: Request | WebSocket, job_id: str) -> str:
        base = (
            settings.public_url
            or f"{settings.preferred_url_scheme}://"
            + (request.headers.get("host") or f"{settings.host}:{settings.port}")
            + settings.root_path
        )
        return f"{base.rstrip('/')}/jobs/{job_id}"

    def find(job_id: str) -> Job:
        if not valid_id(job_id):
            raise ApiError(404, "job_not_found", "job not found")
        try:
            job = store.get(job_id)
        except KeyError:
            raise ApiError(404, "job_not_found", "job not found") from None
        if job.origin != "web":  # CLI and watch jobs are not the dashboard's to show
            raise ApiError(404, "job_not_found", "job not found")
        return job

    def view(request: Request | WebSocket, job: Job) -> dict[str, Any]:
        return job_view(job, runner().live(job.id), page_url(request, job.id))

    @api.post("/jobs", status_code=202, summary="Start protecting an upload")
    def create_job(body: JobRequest, request: Request) -> dict[str, Any]:
        upload, config = resolve(body)
        guess = expected(upload, config)
        job_id = new_job_id()
        output = results / job_id / f"protected{upload.media.suffix}"
        output.parent.mkdir(parents=True, exist_ok=True)
        parameters = {
            **config.model_dump(mode="json"),
            "upload": upload.as_dict(),
            "estimate": guess.as_dict(),
        }
        job = store.create("web", upload.media.kind, upload.path, output, parameters, job_id=job_id)
        try:
            runner().submit(job, config, guess.seconds)
        except QueueFull:
            store.delete(job.id)
            shutil.rmtree(output.parent, ignore_errors=True)
            raise
        return view(request, job)

    @api.get("/jobs", summary="The jobs you name (the page keeps its own history)")
    def list_jobs(
        request: Request,
        ids: Annotated[str, Query(description="comma-separated job IDs")] = "",
    ) -> list[dict[str, Any]]:
        found = []
        for job_id in [i for i in ids.split(",") if i][:100]:
            with contextlib.suppress(ApiError):
                found.append(view(request, find(job_id)))
        return found

    @api.get("/jobs/{job_id}", summary="One job: state, live progress, result")
    def get_job(job_id: str, request: Request) -> dict[str, Any]:
        return view(request, find(job_id))

    @api.delete("/jobs/{job_id}", status_code=204, summary="Delete a job and its files")
    def delete_job(job_id: str) -> Response:
        job = find(job_id)
        if runner().is_active(job.id) and not runner().cancel(job.id):
            raise ApiError(409, "still_running", "the job is running; delete it once it ends")
        shutil.rmtree(results / job.id, ignore_errors=True)
        upload_dir = Path(job.input).parent
        still_used = any(j.input == job.input for j in store.list(limit=1000) if j.id != job.id)
        if not still_used:
            uploads.delete(upload_dir.name)
        store.delete(job.id)
        return Response(status_code=204)

    # -- files ----------------------------------------------------------------------------

    def existing(path: Path | str | None) -> Path:
        if path is None or not Path(path).is_file():
            raise ApiError(410, "expired", "the file is gone (deleted or past retention)")
        return Path(path)

    def download_name(job: Job, suffix: str) -> str:
        stem = Path(job.parameters.get("upload", {}).get("name", "upload")).stem or "upload"
        return f"{stem}{suffix}"

    @api.get("/jobs/{job_id}/original", summary="The uploaded file")
    def original(job_id: str) -> FileResponse:
        job = find(job_id)
        path = existing(job.input)
        return FileResponse(
            path, filename=download_name(job, path.suffix), content_disposition_type="inline"
        )

    @api.get("/jobs/{job_id}/protected", summary="The protected file (video: playable, seekable)")
    def protected(job_id: str, download: bool = False) -> FileResponse:
        job = find(job_id)
        path = existing(job.output if job.report else None)
        return FileResponse(
            path,
            filename=download_name(job, f".protected{path.suffix}"),
            content_disposition_type="attachment" if download else "inline",
        )

    @api.get("/jobs/{job_id}/report", summary="The JSON processing log")
    def report(job_id: str) -> FileResponse:
        job = find(job_id)
        path = existing(Path(job.output).parent / "report.json" if job.report else None)
        return FileResponse(
            path, media_type="application/json", filename=download_name(job, ".deepguard.json")
        )

    @api.get("/jobs/{job_id}/frames/{index}.png", summary="One frame, original or protected")
    def frame(job_id: str, index: int, which: Literal["original", "protected"]) -> Response:
        job = find(job_id)
        if which == "protected" and not job.report:
            raise ApiError(409, "not_ready", "the protected file is not ready yet")
        path = existing(job.input if which == "original" else job.output)
        frames = job.parameters.get("upload", {}).get("frames") or 1
        if not 0 <= index < frames:
            raise ApiError(404, "no_such_frame", f"frame {index} is outside 0..{frames - 1}")
        png = png_bytes(frame_rgb(path, index, settings.max_image_pixels))
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    @api.get("/jobs/{job_id}/qr.svg", summary="QR code of the result page, for a phone")
    def qr(job_id: str, request: Request) -> Response:
        find(job_id)
        return Response(qr_svg(page_url(request, job_id)), media_type="image/svg+xml")

    # -- live progress --------------------------------------------------------------------

    @app.websocket("/api/jobs/{job_id}/events")
    async def events(websocket: WebSocket, job_id: str) -> None:
        """Sends the job (as GET /api/jobs/{id}) whenever it changes, until it ends."""
        await websocket.accept()  # then close with a code the page can read (4401, 4404)
        if not authorized(websocket.headers, websocket.cookies):
            await websocket.close(code=4401, reason="unauthorized")
            return
        try:
            find(job_id)
        except ApiError:
            await websocket.close(code=4404, reason="job not found")
            return
        last = None
        try:
            while True:
                current = await asyncio.to_thread(lambda: view(websocket, store.get(job_id)))
                if current != last:
                    await websocket.send_json(current)
                    last = current
                if current["final"]:
                    break
                await asyncio.sleep(_EVENT_INTERVAL_S)
            await websocket.close()
        except (WebSocketDisconnect, KeyError):  # the page went away, or the job was deleted
            return

    # -- operations and the page ----------------------------------------------------------

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(public)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")

    index = _STATIC.joinpath("index.html").read_text("utf-8")
    page = index.replace("{{ROOT}}", (settings.root_path or "").rstrip("/") + "/")

    @app.get("/", include_in_schema=False)
    @app.get("/jobs/{job_id}", include_in_schema=False)
    def dashboard(job_id: str | None = None) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return app


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; as bytes, so any character a client sends is just wrong."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def _status_of(error: DeepguardError) -> tuple[int, str]:
    if isinstance(error, UploadTooLarge):
        return 413, "too_large"
    if isinstance(error, UnsupportedMedia):
        return 415, "unsupported_type"
    if isinstance(error, InputError):
        return 422, "unreadable"
    if isinstance(error, QueueFull):
        return 429, "queue_full"
    return 400, "invalid_options"


def _code_of(status: int) -> str:
    """``not_found``, ``method_not_allowed``, …: the status's own name."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "http_error"
    return phrase.lower().replace(" ", "_").replace("-", "_")


#: where FastAPI says a field came from: left out of the one-line summary
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def _summary(errors: list[dict[str, Any]]) -> str:
    """``epsilon: Input should be less than or equal to 32; …``, as the CLI words it."""
    parts = []
    for error in errors:
        loc = error["loc"]
        field = ".".join(str(p) for p in loc if p not in _LOCATIONS)
        if error["type"] == "json_invalid" or not field:  # a character offset, or nothing
            field = str(loc[0]) if loc else "request"
        parts.append(f"{field}: {error['msg']}")
    return "; ".join(parts) or "invalid request"


async def _clean_periodically(settings: Settings, store: JobStore) -> None:
    """Retention inside the service: media older than DEEPGUARD_RETENTION_HOURS goes."""
    while True:
        try:
            result = await asyncio.to_thread(cleanup, settings, store)
            if result.deleted_files:
                log.info("retention: deleted %d files", result.deleted_files)
        except OSError as error:
            log.warning("retention cleanup failed: %s", error)
        await asyncio.sleep(_CLEANUP_INTERVAL_S)
