"""``tinyssd serve`` as a user runs it: a subprocess on a free loopback port, real HTTP
requests (every one with a timeout), the page in a headless Chromium; the server is
always stopped."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fixtures import png_header, save_untrained_checkpoint
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

TIMEOUT_S = 30  # per request; the first prediction warms the model up
THRESHOLD = 0.3  # the server's default; an untrained model scores up to about 0.8
MAX_UPLOAD_MB = 1
MAX_PIXELS = 1_000_000


class Server:
    """``tinyssd serve`` in a subprocess; its stderr is drained by a thread."""

    def __init__(self, args: list[str]) -> None:
        cmd = [sys.executable, "-m", "tinyssd", "serve", "--port", "0", *args]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log: list[str] = []
        self.url: str | None = None
        self.started = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if line.startswith("tinyssd serve: http://"):
                self.url = line.split()[2].rstrip("/")
                self.started.set()
        self.started.set()  # exited: wait() below sees url is None

    def wait_healthy(self, timeout: float = 60) -> str:
        if not self.started.wait(timeout) or self.url is None:
            raise AssertionError("tinyssd serve did not start:\n" + "\n".join(self.log))
        assert self.url.startswith("http://127.0.0.1:")
        requests.get(f"{self.url}/health", timeout=TIMEOUT_S).raise_for_status()
        return self.url

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    return save_untrained_checkpoint(folder / "model.safetensors", ["block", "other"])


@pytest.fixture(scope="module")
def server(checkpoint) -> Iterator[Server]:
    running = Server(
        [
            "--weights",
            str(checkpoint),
            "--precision",
            "fp32",
            "--threshold",
            str(THRESHOLD),
            "--max-upload-mb",
            str(MAX_UPLOAD_MB),
            "--max-pixels",
            str(MAX_PIXELS),
        ]
    )
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def url(server) -> str:
    return server.wait_healthy()


def png_bytes(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    pixels[20:80, 30:110] = (230, 200, 40)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post(url: str, data: bytes, name: str = "photo.png", **params) -> requests.Response:
    files = {"file": (name, data, "application/octet-stream")}
    return requests.post(f"{url}/predict", files=files, params=params, timeout=TIMEOUT_S)


def test_health_says_what_is_served(url):
    health = requests.get(f"{url}/health", timeout=TIMEOUT_S).json()
    assert health["status"] == "ok"
    assert health["classes"] == ["block", "other"]
    assert health["threshold"] == THRESHOLD
    assert health["max_upload_bytes"] == MAX_UPLOAD_MB * 1_000_000
    assert health["max_pixels"] == MAX_PIXELS


def test_an_image_gets_the_boxes_the_python_api_gives(url, checkpoint):
    import tinyssd

    data = png_bytes()
    response = post(url, data, name="photo.png")
    assert response.status_code == 200
    body = response.json()
    expected = tinyssd.load(checkpoint, precision="fp32").predict(
        Image.open(io.BytesIO(data)), threshold=THRESHOLD
    )[0]
    assert set(body) == {"image", "width", "height", "boxes", "scores", "labels", "names"}
    assert (body["image"], body["width"], body["height"]) == ("photo.png", 160, 120)
    assert len(body["boxes"]) == len(expected["boxes"]) > 0
    np.testing.assert_allclose(body["boxes"], expected["boxes"].numpy(), atol=0.01)
    np.testing.assert_allclose(body["scores"], expected["scores"].numpy(), atol=1e-4)
    assert body["labels"] == expected["labels"].tolist()
    assert body["names"] == expected["names"]


def test_a_threshold_per_request_and_a_raw_body_upload(url):
    strict = post(url, png_bytes(), threshold=0.99).json()
    assert strict["boxes"] == []
    raw = requests.post(f"{url}/predict", data=png_bytes(), timeout=TIMEOUT_S)
    assert raw.status_code == 200
    assert raw.json()["boxes"] == post(url, png_bytes()).json()["boxes"]


def test_exif_orientation_is_applied_to_uploads(url):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned 90 degrees: portrait
    Image.new("RGB", (80, 50), "grey").save(buffer, format="JPEG", exif=exif)
    body = post(url, buffer.getvalue(), name="phone.jpg").json()
    assert (body["width"], body["height"]) == (50, 80)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (png_bytes()[:200], 422, "photo.png: unreadable image"),
        (b"just some text, not a picture\n" * 20, 422, "photo.png: unreadable image"),
        (b"", 400, "empty upload"),
    ],
    ids=["truncated-png", "not-an-image", "empty"],
)
def test_a_bad_upload_is_a_4xx_json_error(url, data, status, message):
    response = post(url, data)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_requests_without_an_image_are_400(url):
    no_file = requests.post(f"{url}/predict", files={"x": (None, "1")}, timeout=TIMEOUT_S)
    assert no_file.status_code == 400
    assert "field 'file'" in no_file.json()["error"]
    empty = requests.post(f"{url}/predict", timeout=TIMEOUT_S)
    assert empty.status_code == 400


def test_an_upload_over_the_size_limit_is_413(url):
    too_big = os.urandom(MAX_UPLOAD_MB * 1_000_000 + 1)
    response = post(url, too_big)
    assert response.status_code == 413
    assert "over the limit of 1000000 bytes" in response.json()["error"]


def test_a_chunked_upload_over_the_size_limit_is_413(url):
    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        for _ in range(20):
            yield b"\0" * 100_000

    response = requests.post(f"{url}/predict", data=chunks(), timeout=TIMEOUT_S)
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]


def test_an_image_over_the_pixel_budget_is_413_before_decoding(url):
    buffer = io.BytesIO()
    Image.new("RGB", (1250, 1000), "grey").save(buffer, format="PNG")  # 1.25 M pixels, 4 KB
    response = post(url, buffer.getvalue())
    assert response.status_code == 413
    assert "1250x1000" in response.json()["error"]


def test_an_image_over_pillows_own_limit_is_413_naming_the_budget(url):
    response = post(url, png_header(16384, 16384), name="huge.png")  # 268 M pixels
    assert response.status_code == 413
    error = response.json()["error"]
    assert error.startswith(f"huge.png: over the pixel budget of {MAX_PIXELS} (--max-pixels)")
    assert "268435456 pixels" in error and "\n" not in error


def test_pillows_decompression_bomb_warning_as_an_error_is_413(tmp_path):
    from PIL.Image import DecompressionBombWarning

    from tinyssd.data.base import ImageTooLarge
    from tinyssd.data.limits import DataLimits
    from tinyssd.serve import decode_upload

    data = png_header(10_000, 10_000)  # past Pillow's warning, within tinyssd's budget
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecompressionBombWarning)  # as `python -W error`
        with pytest.raises(ImageTooLarge, match=r"^big\.png: over the pixel budget of 150000000"):
            decode_upload(data, "big.png", DataLimits(max_pixels=150_000_000))


def test_a_client_that_disconnects_mid_upload_is_one_log_line(server, url):
    def dropped() -> list[str]:
        return [line for line in server.log if "disconnected before its upload ended" in line]

    host, port = url.removeprefix("http://").split(":")
    form_start = (
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    before = len(dropped())
    for content_type, body in [
        ("multipart/form-data; boundary=XX", form_start),
        ("image/png", b""),
    ]:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as client:
            head = (
                f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                "Content-Length: 500000\r\n\r\n"
            )
            client.sendall(head.encode() + body + b"\0" * 5000)  # then goes away
    assert post(url, png_bytes()).status_code == 200  # still serving
    for _ in range(100):  # the log lines come from the server's thread; wait for both
        if len(dropped()) - before >= 2:
            break
        threading.Event().wait(0.1)
    assert len(dropped()) - before == 2
    assert not any("Traceback" in line or "Exception in ASGI" in line for line in server.log)


@pytest.mark.parametrize("max_upload_mb", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_bad_upload_limit_from_the_python_api_is_one_line(checkpoint, max_upload_mb):
    import tinyssd
    from tinyssd.errors import UsageError
    from tinyssd.serve import create_app, serve

    must = "positive" if math.isfinite(max_upload_mb) else "a finite number"
    message = rf"^--max-upload-mb {max_upload_mb}: must be {must}$"
    with pytest.raises(UsageError, match=message):
        serve(checkpoint, port=0, max_upload_mb=max_upload_mb)
    with pytest.raises(UsageError, match=message):
        create_app(tinyssd.load(checkpoint), max_upload_mb=max_upload_mb)


@pytest.mark.parametrize("threshold", ["1.5", "-0.1", "abc"])
def test_a_bad_threshold_is_422(url, threshold):
    response = post(url, png_bytes(), threshold=threshold)
    assert response.status_code == 422
    assert "threshold" in response.json()["error"]


def test_unknown_paths_are_404_json(url):
    response = requests.get(f"{url}/nothing-here", timeout=TIMEOUT_S)
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}


def test_the_server_still_answers_after_bad_requests(url):
    post(url, b"garbage")
    assert post(url, png_bytes()).status_code == 200


def answers_match(got: dict, alone: dict) -> None:
    """The same detections, up to the float rounding of a batched forward pass: rows whose
    scores tie within rounding may come in either order."""
    assert (got["image"], got["width"], got["height"]) == (
        alone["image"],
        alone["width"],
        alone["height"],
    )
    assert len(got["labels"]) == len(alone["labels"])
    boxes, want_boxes = (
        np.array(got["boxes"]).reshape(-1, 4),
        np.array(alone["boxes"]).reshape(-1, 4),
    )
    far = np.abs(boxes[:, None] - want_boxes[None]).max(axis=-1)  # (n, n)
    far[np.array(got["labels"])[:, None] != np.array(alone["labels"])[None]] = np.inf
    match = far.argmin(axis=1) if len(far) else np.zeros(0, int)
    assert sorted(match.tolist()) == list(range(len(match))), "not the same boxes and labels"
    assert far[np.arange(len(match)), match].max(initial=0) <= 0.02
    np.testing.assert_allclose(got["scores"], np.array(alone["scores"])[match], atol=2e-4)
    assert [alone["names"][i] for i in match] == got["names"]


def test_requests_that_arrive_together_are_batched_and_answered_as_alone(checkpoint):
    server = Server(
        ["--weights", str(checkpoint), "--precision", "fp32", "--threshold", str(THRESHOLD)]
        + ["--max-batch", "4", "--batch-wait-ms", "500"]
    )
    try:
        url = server.wait_healthy()
        # images of different sizes and contents: each its own resize and answer
        uploads = [(f"{i}.png", png_bytes(120 + 20 * i, 100 + 10 * i, seed=i)) for i in range(8)]
        alone = [post(url, data, name).json() for name, data in uploads]  # one at a time
        before = requests.get(f"{url}/health", timeout=TIMEOUT_S).json()["predicted"]
        assert before == {"requests": 8, "batches": 8}
        with ThreadPoolExecutor(len(uploads)) as pool:
            together = list(pool.map(lambda u: post(url, u[1], u[0]).json(), uploads))
        after = requests.get(f"{url}/health", timeout=TIMEOUT_S).json()["predicted"]
    finally:
        server.stop()
    assert sum(len(a["boxes"]) for a in alone) > 0
    for got, want in zip(together, alone, strict=True):
        answers_match(got, want)
    assert after["requests"] == 16
    assert 2 <= after["batches"] - before["batches"] < 8  # at most 4 per batch, some shared


def test_a_busy_port_is_a_one_line_error(checkpoint):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "tinyssd", "serve", "--weights", str(checkpoint)]
        done = subprocess.run(
            [*cmd, "--port", str(port)], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"tinyssd: error: --host 127.0.0.1 --port {port}: cannot listen")
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--port", "70000"], "--port 70000: must be 0 (any free port) to 65535"),
        (["--threshold", "1.5"], "--threshold 1.5: must be in [0, 1]"),
        (["--max-upload-mb", "0"], "--max-upload-mb 0.0: must be positive"),
        (["--batch-wait-ms", "-1"], "--batch-wait-ms -1.0: must be in 0..10000"),
    ],
)
def test_bad_options_are_one_line_errors(checkpoint, capsys, option, message):
    from tinyssd.cli import main

    assert main(["serve", "--weights", str(checkpoint), *option]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"tinyssd: error: {message}"


def test_max_pixels_bounds_the_input_size_the_served_model_claims(checkpoint, capsys, monkeypatch):
    import tinyssd.serve
    from tinyssd.cli import main

    def never_listen(host: str, port: int) -> None:
        raise AssertionError("the model loaded: the server would run")

    monkeypatch.setattr(tinyssd.serve, "listen", never_listen)
    assert main(["serve", "--weights", str(checkpoint), "--max-pixels", "10000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"tinyssd: error: {checkpoint}: image_size 128: 128x128 input is over the pixel "
        "budget of 10000 (--max-pixels)"
    )


def test_importing_tinyssd_loads_neither_fastapi_nor_av():
    probe = (
        "import sys, tinyssd, tinyssd.serve, tinyssd.video, tinyssd.cli\n"
        "tinyssd.cli.build_parser()\n"
        "loaded = [m for m in ('fastapi', 'starlette', 'uvicorn', 'av') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_fastapi_the_error_says_what_to_install(checkpoint, monkeypatch):
    import tinyssd
    from tinyssd.errors import UsageError
    from tinyssd.serve import create_app

    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(UsageError, match=r"pip install 'tinyssd\[serve\]'"):
        create_app(tinyssd.load(checkpoint))


# --- the page, in a real browser ------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium + chromedriver (make setup installs them as root: apt-get)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    # the system driver, named: Selenium Manager never downloads one
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def choose_file(driver, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/")
    WebDriverWait(driver, TIMEOUT_S).until(
        lambda d: "classes:" in d.find_element(By.ID, "model").text
    )
    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, TIMEOUT_S).until(
        lambda d: (
            "detecting" not in d.find_element(By.ID, "status").text
            and d.find_element(By.ID, "status").text
        )
    )


def test_the_page_draws_the_boxes_of_a_chosen_image(browser, url, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "photo.png"
    picture.write_bytes(png_bytes())
    expected = post(url, picture.read_bytes()).json()
    choose_file(browser, url, picture)

    items = browser.find_elements(By.CSS_SELECTOR, "#detections li.detection")
    canvas = browser.find_element(By.ID, "canvas")
    assert len(items) == len(expected["boxes"]) > 0
    assert canvas.get_attribute("data-count") == str(len(expected["boxes"]))
    assert items[0].text.startswith(f"{expected['names'][0]} {expected['scores'][0]:.2f}")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("160", "120")
    assert "box" in browser.find_element(By.ID, "status").text
    # the last box drawn is on top: its left edge has its class's colour (the page's palette)
    x1, y1, _, y2 = expected["boxes"][-1]
    edge = browser.execute_script(
        "const ctx = document.getElementById('canvas').getContext('2d');"
        "return Array.from(ctx.getImageData(arguments[0], arguments[1], 1, 1).data);",
        round(x1),
        round((y1 + y2) / 2),
    )
    palette = {1: (0x1F, 0x77, 0xB4), 2: (0xFF, 0x7F, 0x0E)}
    assert tuple(edge[:3]) == palette[expected["labels"][-1]]


def test_the_page_shows_an_upload_error(browser, url, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    choose_file(browser, url, bad)
    status = browser.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class")
    assert "broken.png: unreadable image" in status.text
    assert browser.find_elements(By.CSS_SELECTOR, "#detections li.detection") == []


def test_health_json_is_what_the_page_reads(url):
    page = requests.get(f"{url}/", timeout=TIMEOUT_S)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'fetch("health")' in page.text and "predict?threshold=" in page.text
    assert json.loads(requests.get(f"{url}/health", timeout=TIMEOUT_S).text)["classes"]
