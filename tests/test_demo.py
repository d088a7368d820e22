"""demo.py: the Gradio app, started as a user starts it (a subprocess on a free 127.0.0.1 port), answers /translate
with an image of the input's size, turns bad uploads into messages and keeps serving, loads random validation
inputs, listens on loopback only and makes no outside connection; a headless Chromium uses the page itself.

Uses the session's tiny 32-px run (conftest.tiny_run). The browser test needs Chromium and its driver (Debian:
apt-get install chromium chromium-driver) and skips, saying so, where they are missing; in CI (.ci/run installs
them and sets PIX2PIX_REQUIRE_BROWSER=1) a missing browser fails instead.

    python -m pytest tests/test_demo.py -q
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import ROOT

START_TIMEOUT_S = 120
CALL_TIMEOUT_S = 60
MAX_PIXELS = 10_000  # the server's --max-pixels: small, so the "huge image" case is cheap to make

# Runs demo.py under an audit hook that records every connection or name lookup to anything but loopback.
AUDITED_START = """
import runpy, sys
log = open(sys.argv[1], "a", buffering=1)
LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0")
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
        log.write(f"connect {args[1]!r}\\n")
    elif event == "socket.getaddrinfo" and args[0] not in LOCAL and args[0] is not None:
        log.write(f"lookup {args[0]!r}\\n")
sys.addaudithook(hook)
sys.argv = sys.argv[2:]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # as `python demo.py` would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"demo.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"demo.py did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tiny_run: Path, tmp_path_factory):
    """(base URL, network audit log, server log) of a running demo; always stopped afterwards."""
    tmp = tmp_path_factory.mktemp("demo")
    port, audit, log = free_port(), tmp / "outside_connections.txt", tmp / "server.log"
    audit.touch()
    env = os.environ | {"GRADIO_TEMP_DIR": str(tmp / "gradio"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", AUDITED_START, str(audit), str(ROOT / "demo.py"),
           "--checkpoint", str(tiny_run / "run" / "generator.pt"), "--port", str(port), "--device", "cpu",
           "--max-pixels", str(MAX_PIXELS)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, proc, log)
        yield url, audit, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> Client:
    return Client(server[0], verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": CALL_TIMEOUT_S},
                  download_files=str(tmp_path_factory.mktemp("downloads")))


def call(client: Client, *args, api_name: str = "/translate"):
    return client.submit(*args, api_name=api_name).result(timeout=CALL_TIMEOUT_S)


def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


@pytest.mark.parametrize("width, height, mode", [(50, 37, "RGB"), (32, 32, "RGB"), (64, 20, "RGBA"),
                                                 (33, 90, "L"), (40, 40, "P")])
def test_translate_returns_an_image_of_the_inputs_size(client, tmp_path, width, height, mode):
    """Non-square, not multiples of the U-Net's 32; alpha, grayscale and palette inputs are converted."""
    src = write_image(tmp_path / f"in.{mode}.png", width, height, mode)
    out = Image.open(call(client, handle_file(str(src)), "eval", 0))
    assert out.size == (width, height) and out.mode == "RGB"
    assert np.asarray(out).std() > 0  # a picture, not a blank


def test_mode_and_seed_controls(client, tmp_path):
    src = handle_file(str(write_image(tmp_path / "in.png", 64, 64)))
    pixels = lambda *args: np.asarray(Image.open(call(client, src, *args)), dtype=np.int16)  # noqa: E731
    assert np.array_equal(pixels("paper", 1), pixels("paper", 1))  # the seed fixes the dropout noise
    assert not np.array_equal(pixels("paper", 1), pixels("paper", 2))
    assert np.array_equal(pixels("eval", 1), pixels("eval", 2))  # eval mode: no noise
    assert not np.array_equal(pixels("eval", 1), pixels("paper", 1))
    assert np.asarray(Image.open(call(client, src))).shape == (64, 64, 3)  # mode and seed may be left out
    for mode, seed, message in [("train", 0, "mode must be 'paper' or 'eval'"), ("eval", "x", "seed must be")]:
        with pytest.raises(Exception, match=message):
            call(client, src, mode, seed)


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(client, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a PNG")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    huge = write_image(tmp_path / "huge.png", 200, 100)  # 20,000 pixels > the server's --max-pixels 10,000
    for path, message in [(not_image, "notes.png is not an image this demo can read"),
                          (empty, "empty.jpg is not an image this demo can read"),
                          (huge, "huge.png is 200x100 = 20,000 pixels, more than this demo's limit of 10,000")]:
        with pytest.raises(Exception) as e:
            call(client, handle_file(str(path)), "eval", 0)
        assert message in str(e.value) and "Traceback" not in str(e.value)
        good = write_image(tmp_path / "good.png", 48, 30)
        assert Image.open(call(client, handle_file(str(good)), "eval", 0)).size == (48, 30)


def test_random_validation_input_comes_from_the_checkpoints_val_dir(client, tiny_run):
    got = np.asarray(Image.open(call(client, api_name="/random_input")).convert("RGB"))
    # the tiny run is BtoA: the input is the right half of one of its validation files
    halves = [np.asarray(Image.open(p).convert("RGB"))[:, 32:] for p in sorted((tiny_run / "data" / "val").iterdir())]
    assert any(np.array_equal(got, h) for h in halves)


def test_loopback_only_and_no_outside_connections(server, client, tmp_path):
    url, audit, _ = server
    call(client, handle_file(str(write_image(tmp_path / "in.png", 32, 32))), "eval", 0)
    assert audit.read_text() == ""  # no analytics, version checks, share tunnels or CDN fetches from the server
    port = int(url.rsplit(":", 1)[1].strip("/"))
    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        pytest.skip("/proc/net/tcp not available: cannot list listening sockets on this OS")
    listening = [line.split()[1] for line in tcp.read_text().splitlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in listening  # 127.0.0.1:port
    assert f"00000000:{port:04X}" not in listening  # not 0.0.0.0:port


def test_bad_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "generator.pt"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--checkpoint", str(bad), "--port",
                           str(free_port())], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {bad} is not a loadable pix2pix checkpoint")
    assert "Traceback" not in proc.stderr


def test_busy_port_is_one_clear_error(tiny_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--checkpoint",
                               str(tiny_run / "run" / "generator.pt"), "--port", str(port)],
                              capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: cannot listen on 127.0.0.1:{port} (in use, or not an address of this "
                                   f"machine); choose another --port or --host")
    assert "serving on" not in proc.stdout


# ----------------------------------------------------------------------------- a real browser

def browser_paths() -> tuple[str, str]:
    """(Chromium, chromedriver) on PATH; else a skip, or a failure where PIX2PIX_REQUIRE_BROWSER=1 (set by .ci/run,
    which installs them: in CI a missing browser must fail these tests rather than quietly skip them)."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        message = ("headless browser test needs Chromium and chromedriver on PATH (Debian: apt-get install chromium "
                   "chromium-driver); not found")
        if os.environ.get("PIX2PIX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}; PIX2PIX_REQUIRE_BROWSER=1 requires them", pytrace=False)
        pytest.skip(message)
    return chromium, driver


def test_ci_turns_a_missing_browser_into_a_failure(monkeypatch, tmp_path):
    """.ci/run installs Debian's chromium and chromium-driver (a failed install ends CI with a message) and sets
    PIX2PIX_REQUIRE_BROWSER=1: a browser missing in CI fails the browser tests instead of skipping them."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install -y -q chromium" in ci and "chromium-driver" in ci and "exit 1" in ci
    pytest_line = next(line for line in ci.splitlines() if "python -m pytest" in line)
    assert "PIX2PIX_REQUIRE_BROWSER=1 " in pytest_line
    monkeypatch.setenv("PATH", str(tmp_path))  # no browser on it
    monkeypatch.delenv("PIX2PIX_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs Chromium and chromedriver"):
        browser_paths()
    monkeypatch.setenv("PIX2PIX_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="PIX2PIX_REQUIRE_BROWSER=1 requires them"):
        browser_paths()


def start_chromium(tmp_path: Path, width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    browser.set_page_load_timeout(CALL_TIMEOUT_S)
    browser.set_script_timeout(CALL_TIMEOUT_S)
    return browser


def test_headless_chromium_uploads_an_image_and_sees_the_output(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    url = server[0]
    src = write_image(tmp_path / "upload.png", 96, 64)
    browser = start_chromium(tmp_path)
    try:
        browser.get(url)
        wait = WebDriverWait(browser, CALL_TIMEOUT_S)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
        upload.send_keys(str(src))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#input-image img")))
        browser.find_element(By.ID, "translate-btn").click()
        output = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#output-image img")))
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", output))
        size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", output)
        assert size == [96, 64]  # the translation, at the uploaded image's size
        resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        outside = [r for r in resources if not r.startswith(url) and not r.startswith(("data:", "blob:"))]
        assert outside == []  # the page needs nothing from the internet
    finally:
        browser.quit()


def test_headless_chromium_draws_with_a_label_colour_and_translates_the_drawing(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    import demo
    browser = start_chromium(tmp_path, height=1400)
    try:
        browser.get(server[0])
        wait = WebDriverWait(browser, CALL_TIMEOUT_S)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#sketch button"))).click()
        canvas = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#sketch canvas")))
        ActionChains(browser).move_to_element_with_offset(canvas, -30, -30).click_and_hold() \
            .move_by_offset(60, 0).move_by_offset(0, 60).release().perform()  # a stroke in the default brush colour
        browser.find_element(By.ID, "draw-btn").click()
        output = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#output-image img")))
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", output))
        size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", output)
        assert size == [32, 32]  # the sketchpad is the model's IMAGE_SIZE square
        src = browser.find_element(By.CSS_SELECTOR, "#input-image img").get_attribute("src")
        with urllib.request.urlopen(src, timeout=CALL_TIMEOUT_S) as r:
            drawn = np.asarray(Image.open(r).convert("RGB")).reshape(-1, 3)
        colours = {tuple(int(c) for c in p) for p in drawn}
        assert demo.FACADES_PALETTE[0][1] in colours  # the canvas starts as "background"
        assert demo.FACADES_PALETTE[2][1] in colours  # the stroke is the "window" label colour
    finally:
        browser.quit()


def test_random_validation_input_reads_a_and_b_folders_too(tiny_run, tmp_path):
    """A --val-dir in the other layout, A/ + B/ folders: the random input is the input side of a pair (B for the
    BtoA tiny run), never half of one file."""
    import demo
    from harness.data_checks import find_pairs
    from harness.inference import load_for_inference
    for side, value in (("A", 40), ("B", 200)):
        (tmp_path / side).mkdir()
        Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(tmp_path / side / "x.png")
    G, cfg, device, precision = load_for_inference(tiny_run / "run" / "generator.pt", "eval", "cpu")
    app = demo.build_app(G, cfg, device, precision, tiny_run / "run" / "generator.pt", find_pairs(tmp_path)[0])
    random_input = next(f.fn for f in app.fns.values() if f.api_name == "random_input")
    got = random_input()
    assert got.shape == (32, 32, 3) and (got == 200).all()
