"""End to end: the dashboard in a real headless Chromium (Debian's), driven by Playwright.

``deepguard serve`` runs as its own process, exactly as an operator starts it; the browser
uploads a shared photo and a clip cut from a shared video, follows the live progress, opens
the compare, slider and heatmap views, decodes the QR code from the rendered page, downloads
both files and checks them (the photo goes through the file picker, the clip is dropped
onto the page). Screenshots of every main state go to ``artifacts/screenshots``
(or ``$DEEPGUARD_SCREENSHOTS``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import IN_CI, REPO_ROOT
from tests.media import make_clip
from tests.test_video_pipeline import free_port

pytestmark = pytest.mark.slow
CHROMIUM = Path(os.environ.get("DEEPGUARD_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(os.environ.get("DEEPGUARD_SCREENSHOTS", REPO_ROOT / "artifacts" / "screenshots"))
# as root, in a sandbox with no outside network: no sandboxing, no background connections
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
JOB_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"Chromium not found at {CHROMIUM} (make system-test-deps installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``deepguard serve`` in its own process, with its own data folder and a local Ray."""
    port = free_port()
    data = tmp_path_factory.mktemp("e2e-data")
    env = {**os.environ, "DEEPGUARD_DATA_DIR": str(data), "PORT": str(port), "RAY_ADDRESS": ""}
    log = (data / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("deepguard")), "serve"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((data / "serve.log").read_text())
        time.sleep(0.3)
    yield base
    process.terminate()  # the local Ray cluster it started stops with it (pipeline/cluster.py)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def shots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@pytest.fixture(scope="module")
def photo(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    image.thumbnail((320, 320))
    path = tmp_path_factory.mktemp("e2e-media") / "press photo.jpg"
    image.save(path, "JPEG", quality=95)
    return path


@pytest.fixture(scope="module")
def clip(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("e2e-media") / "interview.mp4"
    return make_clip(videos_dir / "lp_s18.mp4", target, 12, size=(192, 192))


def _choose_quick_options(page, iterations: int) -> None:
    """Advanced panel: RetinaFace alone and a few iterations, so a CPU finishes in seconds."""
    page.click("#advanced summary")
    for box in page.query_selector_all("#detectors input:checked"):
        box.uncheck()
    page.check("#detectors input[value=retinaface]")
    page.fill("#iterations", str(iterations))
    page.dispatch_event("#iterations", "change")
    page.wait_for_function("document.querySelector('#estimate').textContent.length > 0")


def _drop(page, path: Path, mime: str) -> None:
    """Drag and drop ``path`` onto the drop zone, as a user does from the desktop."""
    page.evaluate(
        """([name, data, type]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            const zone = document.querySelector('#dropzone');
            for (const kind of ['dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true }));
            }
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode(), mime],
    )


def _protect(
    page, path: Path, shots: Path, prefix: str, iterations: int, drop: str | None = None
) -> str:
    """Upload (file picker, or dropped with MIME type ``drop``), start with quick options,
    follow it to the result."""
    if drop:
        _drop(page, path, drop)
    else:
        page.set_input_files("#file", str(path))
    page.wait_for_selector("#options:not([hidden])")
    _choose_quick_options(page, iterations)
    page.screenshot(path=shots / f"{prefix}-1-options.png", full_page=True)
    page.click("#start")
    page.wait_for_url("**/jobs/*")
    page.wait_for_selector("#phases .phase", timeout=JOB_TIMEOUT_MS)
    page.screenshot(path=shots / f"{prefix}-2-progress.png", full_page=True)
    page.wait_for_selector("#result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#side-protected').naturalWidth > 0")
    page.screenshot(path=shots / f"{prefix}-3-result.png", full_page=True)
    return page.url.rsplit("/", 1)[-1]


def _open_views(page, shots: Path, prefix: str) -> None:
    page.click(".tabs button[data-mode=slider]")
    page.fill("#slider-pos", "30")
    page.dispatch_event("#slider-pos", "input")
    page.screenshot(path=shots / f"{prefix}-4-slider.png", full_page=True)
    page.click(".tabs button[data-mode=heatmap]")
    heatmap = page.locator("#heatmap")
    heatmap.wait_for()
    lit = page.evaluate("""() => {
        const c = document.querySelector('#heatmap');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0;
        for (let i = 0; i < d.length; i += 4) lit += d[i] > 0;
        return lit / (d.length / 4);
    }""")
    assert 0 < lit < 1, "the heatmap shows where the perturbation is, not everywhere"
    box = heatmap.bounding_box()
    heatmap.hover(position={"x": box["width"] / 2, "y": box["height"] / 2})
    page.wait_for_function("document.querySelector('#hover-readout').dataset.max !== undefined")
    assert "x " in page.text_content("#hover-readout")
    page.screenshot(path=shots / f"{prefix}-5-heatmap.png", full_page=True)


def _qr_url(page, shots: Path, prefix: str) -> str:
    """Decode the QR code as rendered in the page (an element screenshot)."""
    page.locator("#qr").scroll_into_view_if_needed()
    page.wait_for_function("document.querySelector('#qr').naturalWidth > 0")
    png = page.locator("#qr").screenshot(path=shots / f"{prefix}-qr.png")
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    # OpenCV's classic detector misses some sharp, valid codes (it depends on the content), so
    # try its ArUco-based detector too, and a few nearest-neighbour scales with a white margin.
    # Error correction makes a wrong text practically impossible; an empty one means unread.
    for factor in (1, 2, 4, 6):
        scaled = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
        scaled = cv2.copyMakeBorder(scaled, 32, 32, 32, 32, cv2.BORDER_CONSTANT, value=255)
        for detector in (cv2.QRCodeDetectorAruco(), cv2.QRCodeDetector()):
            text, _, _ = detector.detectAndDecode(scaled)
            if text:
                return text
    return ""


def _download(page, selector: str, folder: Path) -> Path:
    with page.expect_download() as download:
        page.click(selector)
    target = folder / download.value.suggested_filename
    download.value.save_as(target)
    return target


#: every element of the page that sticks out sideways (past the viewport, or past the column
#: it sits in) and every pair of the result's blocks that overlap, described in one line each
_LAYOUT_FAULTS = """(viewport) => {
    const faults = [];
    const name = (el) => el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}.${el.className}`;
    const shown = (el) => el.getClientRects().length > 0
        && getComputedStyle(el).visibility !== 'hidden';
    if (document.documentElement.scrollWidth > viewport + 1) {
        faults.push(`page ${document.documentElement.scrollWidth} px wide in ${viewport}`);
    }
    const header = document.querySelector('header').getBoundingClientRect();
    if (header.width < document.documentElement.scrollWidth - 1) {
        faults.push(`header ${header.width} px, page ${document.documentElement.scrollWidth}`);
    }
    for (const column of document.querySelectorAll('#card-main, #card-side, #compare')) {
        if (!shown(column)) continue;
        const box = column.getBoundingClientRect();
        for (const el of column.querySelectorAll('*')) {
            if (!shown(el)) continue;
            const r = el.getBoundingClientRect();
            if (r.right > box.right + 1 || r.left < box.left - 1 || r.right > viewport + 1) {
                faults.push(`${name(el)} [${r.left}, ${r.right}] outside ${name(column)} `
                            + `[${box.left}, ${box.right}]`);
            }
        }
    }
    const blocks = [...document.querySelectorAll('#card-main, #card-side, #compare')]
        .filter(shown);
    for (let i = 0; i < blocks.length; i++) {
        for (let j = i + 1; j < blocks.length; j++) {
            const a = blocks[i].getBoundingClientRect(), b = blocks[j].getBoundingClientRect();
            const x = Math.min(a.right, b.right) - Math.max(a.left, b.left);
            const y = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
            if (x > 1 && y > 1) faults.push(`${name(blocks[i])} overlaps ${name(blocks[j])}`);
        }
    }
    return faults;
}"""


def _assert_laid_out(page) -> None:
    """Nothing of the result overlaps or sticks out sideways, with every disclosure open."""
    page.evaluate("document.querySelectorAll('#result details').forEach((d) => d.open = true)")
    faults = page.evaluate(_LAYOUT_FAULTS, page.viewport_size["width"])
    assert not faults, faults[:10]


def _tool_cells(page, tool: str) -> list[tuple[str, str | None]]:
    """The result card's row for ``tool``: each cell's text and tooltip."""
    page.wait_for_selector("#tools-table:not([hidden])")
    cells = page.locator(f"#tools-table tr[data-tool='{tool}'] td")
    return [(cell.text_content(), cell.get_attribute("title")) for cell in cells.all()]


def _desktop(browser, server: str):
    """A desktop-sized English browser window on the dashboard, ready to use."""
    context = browser.new_context(locale="en-US", accept_downloads=True,
                                  viewport={"width": 1280, "height": 900})  # fmt: skip
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]")
    return context, page


def test_photo_end_to_end(browser, server: str, photo: Path, shots: Path, tmp_path: Path):
    context, page = _desktop(browser, server)
    assert page.text_content("header .tagline") == "Protect photos and clips against face swaps"
    page.screenshot(path=shots / "photo-0-start.png", full_page=True)

    job_id = _protect(page, photo, shots, "photo", iterations=6)
    assert page.text_content("#job-state") == "Done"
    assert "retinaface" in page.text_content("#verdict-table")
    (title, note), _, (deliveries, _), (status, _) = _tool_cells(page, "faceswap")
    assert title == "faceswap (GPU)on a stand-in" and note.startswith("Stand-in: RetinaFace")
    assert status in {"Protected", "Not protected"}
    assert "as saved" in deliveries, deliveries
    assert _tool_cells(page, "deepfacelive")[3][0] == "Not covered"
    # the headline speaks of the tools, as the table does: RetinaFace alone covers faceswap,
    # DeepFaceLab and Wav2Lip, not roop or LivePortrait
    verdict = page.text_content("#verdict")
    assert "Not covered by the chosen detectors" in verdict and "LivePortrait" in verdict
    assert "no detector finds a face" not in verdict
    faces = page.locator("#faces-list li")
    assert faces.count() >= 1 and "ε " in faces.first.text_content()
    _assert_laid_out(page)
    page.screenshot(path=shots / "photo-3-result-details.png", full_page=True)
    _open_views(page, shots, "photo")
    assert _qr_url(page, shots, "photo") == f"{server}/jobs/{job_id}" == page.url

    protected = _download(page, "#download-file", tmp_path)
    assert protected.name == "press photo.protected.jpg"
    clean = np.asarray(Image.open(photo).convert("RGB"), np.int16)
    result = np.asarray(Image.open(protected).convert("RGB"), np.int16)
    assert result.shape == clean.shape and 0 < np.abs(result - clean).max() <= 32
    report = json.loads(_download(page, "#download-report", tmp_path).read_text())
    assert report["kind"] == "image" and "retinaface" in report["detectors"]

    page.reload()  # the page survives a reload and shows the job again
    page.wait_for_selector("#result:not([hidden])")
    page.select_option("#lang", "ko")
    assert page.text_content("#job-state") == "완료"
    assert page.text_content("#tools-table caption") == "얼굴 합성 도구"
    assert _tool_cells(page, "deepfacelive")[3][0] == "보호 범위 밖"
    page.screenshot(path=shots / "photo-6-korean.png", full_page=True)
    page.click("#history-toggle")
    page.wait_for_selector(f"#history li[data-id='{job_id}']")
    page.screenshot(path=shots / "photo-7-history.png", full_page=True)
    context.close()

    phone = browser.new_context(locale="ko-KR", viewport={"width": 390, "height": 844},
                                device_scale_factor=2, is_mobile=True, has_touch=True)  # fmt: skip
    page = phone.new_page()
    page.goto(f"{server}/jobs/{job_id}")
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#job-state") == "완료"  # Korean from the browser language
    _assert_laid_out(page)  # nothing sticks out sideways on a phone, nothing overlaps
    page.screenshot(path=shots / "photo-8-phone.png", full_page=True)
    phone.close()


def test_refused_upload_shows_a_clear_error(browser, server: str, tmp_path: Path, shots: Path):
    fake = tmp_path / "not a photo.jpg"
    fake.write_bytes(b"MZ\x90\x00 this is an executable, not a photo" * 20)
    page = browser.new_page(locale="en-US")
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#error:not([hidden])")
    assert "not a photo or clip we can protect" in page.text_content("#error")
    page.screenshot(path=shots / "error-unsupported.png", full_page=True)
    page.close()


def test_clip_end_to_end(browser, server: str, clip: Path, shots: Path, tmp_path: Path):
    context, page = _desktop(browser, server)
    job_id = _protect(page, clip, shots, "clip", iterations=2, drop="video/mp4")
    frames = page.evaluate("""() => [...document.querySelectorAll('#figures dt')]
        .find((dt) => dt.textContent === 'Frames').nextElementSibling.textContent""")
    assert frames == "12"
    assert _tool_cells(page, "faceswap")[0][0] == "faceswap (GPU)on a stand-in"
    verdict = page.text_content("#verdict")
    assert "Not covered by the chosen detectors" in verdict and "roop" in verdict
    _assert_laid_out(page)

    page.fill("#frame", "7")  # scrub to another frame: both sides and the heatmap follow
    page.dispatch_event("#frame", "input")
    page.wait_for_function("document.querySelector('#side-protected').src.includes('/frames/7')")
    _open_views(page, shots, "clip")
    duration = page.evaluate("""() => new Promise((resolve) => {
        const video = document.querySelector('#player');
        if (video.readyState >= 1) resolve(video.duration);
        video.onloadedmetadata = () => resolve(video.duration);
        video.onerror = () => resolve(-1);
    })""")
    assert duration == pytest.approx(12 / 25, abs=0.1), "the protected clip plays in the page"
    assert _qr_url(page, shots, "clip") == f"{server}/jobs/{job_id}"

    protected = _download(page, "#download-file", tmp_path)
    assert protected.name == "interview.protected.mp4"
    with av.open(str(protected)) as container:
        assert container.streams.video[0].frames == 12 and container.streams.audio
    report = json.loads(_download(page, "#download-report", tmp_path).read_text())
    assert report["kind"] == "video" and report["video"]["frames"] == 12
    context.close()


def test_screenshots_were_saved(shots: Path) -> None:
    names = {path.name for path in shots.glob("*.png")}
    for state in ("start", "options", "progress", "result", "slider", "heatmap", "phone"):
        assert any(state in name for name in names), state
    assert all(Image.open(io.BytesIO((shots / n).read_bytes())).size[0] > 100 for n in names)
