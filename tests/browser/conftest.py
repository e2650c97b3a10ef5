"""The console in a real browser: a herd server, a simulated device and Debian's chromium.

One herd (`$HERD_BIN serve`, default `target/release/herd`) runs for the whole session on a free
127.0.0.1 port, in a fresh temporary directory that is both its working directory and its data
directory. It starts WITHOUT `HERD_BOOTSTRAP_TOKEN`, so it writes
`<data-dir>/initial-admin-token`, which the set-up flow and the API helpers read.

A simulated device (`SimDevice`, stdlib only, loopback only) registers with that admin token and
then behaves as the device protocol says: a heartbeat and a metric sample every 2 s, and a long
poll for commands that answers a `screenshot` with progress, a real PNG and a `succeeded`
result.

Every test that takes the `page` fixture fails when the browser logs a console error or a page
error (an uncaught exception), with the messages in the failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]

CHROMIUM = os.environ.get("HERD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

ADMIN_USER = "browser-admin"
ADMIN_PASSWORD = "browser-admin-password"
VIEWER_USER = "browser-viewer"
VIEWER_PASSWORD = "browser-viewer-password"
DEVICE_NAME = "Lobby screen 1"


# --------------------------------------------------------------------------------------------
# Skips for pages another branch has not merged yet.
#
def expect_page(status: int, what: str, url: str) -> None:
    """Fails the test when a console page that must exist answers 404."""
    assert status != 404, f"{what}: {url} answers 404"


# --------------------------------------------------------------------------------------------
# The server.


def listening_address(process: subprocess.Popen, log_path: Path, seconds: float = 30) -> str:
    """The address herd bound (it listens on port 0: the kernel picks a free port, so no other
    process can take it between choosing and binding), read from its JSON log line
    "herd is listening"."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            fields = record.get("fields", {})
            if fields.get("message") == "herd is listening" and fields.get("address"):
                return fields["address"]
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"herd did not say where it listens within {seconds} s:\n" + log_path.read_text(errors="replace"))


@dataclass
class Herd:
    base: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen
    admin_token: str = ""

    def url(self, path: str) -> str:
        return self.base + path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"

    # The JSON API with the admin token (or another bearer token).
    def api(self, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None,
            content_type: str = "application/json", timeout: float = 15):
        return http(method, self.url(path), token or self.admin_token, body=body, raw=raw,
                    content_type=content_type, timeout=timeout)


class HttpError(Exception):
    def __init__(self, status: int, body: str, what: str):
        super().__init__(f"{what} answered {status}: {body[:500]}")
        self.status = status
        self.body = body


def http(method: str, url: str, token: str | None, body=None, raw: bytes | None = None,
         content_type: str = "application/json", timeout: float = 15):
    """One request; answers the decoded JSON body (or None), raises HttpError on >= 400."""
    data = raw
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        raise HttpError(error.code, error.read().decode(errors="replace"), f"{method} {url}") from None
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def wait_healthy(herd: Herd, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if herd.process.poll() is not None:
            raise RuntimeError(f"herd exited with {herd.process.returncode}:\n{herd.log()}")
        try:
            with urllib.request.urlopen(herd.url("/healthz"), timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"herd did not answer /healthz within {seconds} s:\n{herd.log()}")


_failed_tests: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _failed_tests.append(item.nodeid)
    return report


@pytest.fixture(scope="session")
def herd():
    binary = Path(os.environ.get("HERD_BIN", "target/release/herd"))
    if not binary.is_absolute():
        binary = (Path.cwd() / binary).resolve()
    if not binary.exists():
        pytest.exit(f"no herd binary at {binary} (build it, or set HERD_BIN)", returncode=2)
    work = Path(tempfile.mkdtemp(prefix="herd-browser-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    env.update({
        "HERD_DATA_DIR": str(work),
        "HERD_LISTEN": "127.0.0.1:0",
        "HERD_LOG_FORMAT": "json",
        # Every test signs in from 127.0.0.1; the default per-address limit is for real users.
        "HERD_LOGIN_RATE_PER_ADDRESS": "1000",
        "HERD_LOGIN_RATE_PER_USERNAME": "1000",
    })
    log_path = work / "herd.log"
    log = open(log_path, "wb")
    process = subprocess.Popen([str(binary), "serve"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = Herd(base="", data_dir=work, log_path=log_path, process=process)
    try:
        server.base = "http://" + listening_address(process, log_path)
        wait_healthy(server)
        token_file = work / "initial-admin-token"
        for _ in range(50):
            if token_file.exists() and token_file.read_text().strip():
                break
            time.sleep(0.1)
        server.admin_token = token_file.read_text().strip()
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if _failed_tests:
            sys.stderr.write(f"\n===== herd's log ({log_path}) =====\n{server.log()}\n===== end of herd's log =====\n")
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The simulated device.


def png(width: int = 160, height: int = 90) -> bytes:
    """A valid RGB PNG: a blue-to-green gradient with a white bar (a 'screen')."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            if height // 3 <= y < height // 3 + 8:
                rows += b"\xff\xff\xff"
            else:
                rows += bytes((30, 60 + (140 * x) // width, 200 - (120 * y) // height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")


# The longest a simulated screenshot waits for its test to release it.
SCREENSHOT_HOLD = 60


@dataclass
class SimDevice:
    herd: Herd
    id: str
    name: str
    token: str
    # A screenshot waits for the test to release it (`release_screenshot`), so the test sees the
    # command unfinished first, whatever the machine's speed; at most `SCREENSHOT_HOLD` seconds.
    screenshot_release: threading.Event = field(default_factory=threading.Event)
    samples_posted: int = 0
    handled: dict = field(default_factory=dict)  # command id -> type
    errors: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def call(self, method: str, path: str, **kwargs):
        return self.herd.api(method, path, token=self.token, **kwargs)

    def heartbeat_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                self.call("POST", "/devices/connect")
                n += 1
                self.call("POST", "/devices/metrics", body={
                    "cpu": 20 + (n * 7) % 60, "ram": 40 + (n * 3) % 30, "storage": 62, "temperature": 48 + n % 5,
                })
                self.samples_posted += 1
            except Exception as error:  # noqa: BLE001 - kept for the failure message
                self.errors.append(f"heartbeat: {error}")
            self.stop.wait(2)

    def command_loop(self) -> None:
        while not self.stop.is_set():
            try:
                answer = self.call("GET", "/devices/self/commands?wait=5s", timeout=20)
                for command in answer.get("items", []):
                    if command["id"] not in self.handled:
                        self.handled[command["id"]] = command["type"]
                        self.answer(command)
            except Exception as error:  # noqa: BLE001
                self.errors.append(f"commands: {error}")
                self.stop.wait(1)

    def answer(self, command: dict) -> None:
        base = f"/devices/self/commands/{command['id']}"
        if command["type"] == "screenshot":
            self.call("POST", f"{base}/progress", body={"progress": 10, "message": "taking a screenshot"})
            self.screenshot_release.wait(SCREENSHOT_HOLD)
            self.screenshot_release.clear()
            image = png()
            self.call("PUT", f"{base}/screenshot", raw=image, content_type="image/png")
            self.call("POST", f"{base}/result", body={"status": "succeeded", "result": {"width": 160, "height": 90}})
        else:
            self.call("POST", f"{base}/result", body={"status": "succeeded"})


@pytest.fixture(scope="session")
def device(herd):
    answer = herd.api("POST", "/devices", body={
        "name": DEVICE_NAME, "serialNumber": "BROWSER-0001", "model": "X96 Max", "tags": ["lobby"],
    })
    sim = SimDevice(herd=herd, id=answer["device"]["id"], name=answer["device"]["name"], token=answer["deviceToken"])
    threads = [threading.Thread(target=sim.heartbeat_loop, daemon=True, name="sim-heartbeat"),
               threading.Thread(target=sim.command_loop, daemon=True, name="sim-commands")]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15
    while sim.samples_posted == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sim.samples_posted > 0, f"the simulated device posted no sample: {sim.errors}"
    yield sim
    sim.stop.set()
    for thread in threads:
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------
# Users.


def create_user(herd: Herd, username: str, password: str, role: str) -> None:
    herd.api("POST", "/users", body={"username": username, "password": password, "role": role})


@pytest.fixture(scope="session")
def admin_user(herd):
    create_user(herd, ADMIN_USER, ADMIN_PASSWORD, "admin")
    return ADMIN_USER, ADMIN_PASSWORD


@pytest.fixture(scope="session")
def viewer_user(herd):
    create_user(herd, VIEWER_USER, VIEWER_PASSWORD, "viewer")
    return VIEWER_USER, VIEWER_PASSWORD


# --------------------------------------------------------------------------------------------
# The browser.


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fails a test whose browser logged a console error or an uncaught page error."""
    result = yield
    errors = getattr(item, "browser_errors", None)
    if errors:
        raise AssertionError("the browser reported errors:\n  " + "\n  ".join(errors))
    return result


class BrowserErrors(list):
    """What the browser reported; `forget(...)` drops the ones a test expects (a 404 it skips)."""

    def forget(self, needle: str) -> None:
        self[:] = [e for e in self if needle not in e]


def watch(page, errors: BrowserErrors) -> None:
    def on_console(message):
        if message.type == "error":
            location = message.location or {}
            errors.append(f"console error on {page.url}: {message.text} ({location.get('url', '')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"page error on {page.url}: {error}"))


@pytest.fixture
def browser_errors(request):
    errors = BrowserErrors()
    request.node.browser_errors = errors
    return errors


@pytest.fixture
def new_page(browser, browser_errors):
    """Opens pages in fresh contexts (no cookies, no cache), each watched for errors."""
    contexts = []

    def open_page(viewport=DESKTOP, **options):
        context = browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        watch(page, browser_errors)
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    return new_page()


def sign_in(page, herd: Herd, username: str, password: str) -> None:
    """Signs in through the form, as a person would, and lands on the overview."""
    page.goto(herd.url("/ui/sign-in"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(herd.url("/ui/"))


@pytest.fixture
def admin_page(page, herd, admin_user, device):
    sign_in(page, herd, *admin_user)
    return page


def screenshot_dir() -> Path:
    base = Path(os.environ.get("HERD_CI_LOG_DIR", REPO / "target" / "ci-logs"))
    directory = base / "console"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def save_screenshot(page, name: str) -> Path:
    path = screenshot_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
