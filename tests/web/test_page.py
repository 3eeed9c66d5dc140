"""The page at GET /, in a real headless Chromium against a real server process.

The server serves the painted (hand-set) model of ``conftest.painted_saved_model``, whose
masks are known, and has API keys. One server and one browser serve every test here.
Screenshots are written under pytest's temporary directory; their paths are printed
(``pytest -s``) so that a person can look at them.
"""

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import checkpoint_factory
from tests.conftest import PAINTED_API_KEYS, PAINTED_MAX_UPLOAD_BYTES

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = PAINTED_API_KEYS[1]
# The routed classes the bands image holds, by label, and their colour in the VOC palette.
BAND_LABELS = {"background", "aeroplane", "car", "person"}
PERSON_RGB = (192, 128, 128)
DESKTOP = (1280, 1000)
FIRST_SCREEN = (1280, 800)  # a laptop's screen: what shows before any scrolling
PHONE = (390, 844)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no /usr/bin/chromium + /usr/bin/chromedriver "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console, for the checks
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-screenshots")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("web-inputs")
    image, _ = checkpoint_factory.routed_bands(320, 160)
    paths = {"bands": root / "bands.png", "text": root / "notes.txt",
             "big": root / "noise.png", "tall": root / "tall.png"}
    Image.fromarray(image).save(paths["bands"])
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(paths["tall"])  # 160 × 320
    paths["text"].write_text("this is not an image\n")
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)
    Image.fromarray(noise).save(paths["big"])
    assert paths["big"].stat().st_size > PAINTED_MAX_UPLOAD_BYTES
    return paths


@pytest.fixture
def page(browser: WebDriver, painted_server) -> Iterator[WebDriver]:
    """The page, freshly loaded, at desktop size, with no key stored."""
    browser.set_window_size(*DESKTOP)
    browser.get(painted_server.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    yield browser
    # No script error on the console: every failure must have reached the page instead
    # (refused requests themselves are logged by Chromium as "Failed to load resource").
    errors = [entry["message"] for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]
    assert errors == [], errors
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    stubs = getattr(browser, "_atrous_stubs", [])
    for identifier in stubs:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                {"identifier": identifier})
    stubs.clear()


def wait_for(driver: WebDriver, condition, what: str, timeout: float = 30):
    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; page says: "
                             f"{driver.find_element(By.TAG_NAME, 'main').text}") from None


def visible(driver: WebDriver, element_id: str) -> bool:
    return driver.find_element(By.ID, element_id).is_displayed()


def error_text(driver: WebDriver) -> str:
    wait_for(driver, lambda d: visible(d, "error"), "an error message")
    return driver.find_element(By.ID, "error").text


def upload(driver: WebDriver, path: Path) -> None:
    driver.find_element(By.ID, "image-file").send_keys(str(path))


def wait_for_result(driver: WebDriver) -> None:
    wait_for(driver, lambda d: d.find_element(By.ID, "status").text == "Done."
             and visible(d, "results"), "the result")


def legend(driver: WebDriver) -> dict[str, str]:
    """Class label -> share, as the legend shows them (read in one go: rows get replaced)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#legend tbody tr')]"
        ".map((row) => [row.cells[0].textContent.trim(), row.cells[1].textContent.trim()])")
    return dict(rows)


def overlay_pixel(driver: WebDriver, x: int, y: int) -> list[int]:
    return driver.execute_script(
        "const c = document.getElementById('overlay-canvas');"
        "return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1)"
        ".data.slice(0, 3));", x, y)


def enter_key(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key, Keys.TAB)  # leaving the field stores it (change event)


DROP = """
    const bytes = Uint8Array.from(atob(arguments[1]), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], arguments[0], {type: "image/png"}));
    document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop",
        {dataTransfer: data, bubbles: true, cancelable: true}));
"""


def drop_file(driver: WebDriver, name: str, data: bytes) -> None:
    """What dropping a file from the desktop onto the page delivers."""
    driver.execute_script(DROP, name, base64.b64encode(data).decode())


def screenshot(driver: WebDriver, shots: Path, name: str) -> Path:
    """The whole page, not only the visible part of it."""
    path = shots / f"{name}.png"
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000, path
    print(f"screenshot: {path}")
    return path


def stub(driver: WebDriver, source: str) -> None:
    """Runs ``source`` before the page's own script on every load until the test ends."""
    result = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
    driver.__dict__.setdefault("_atrous_stubs", []).append(result["identifier"])
    driver.refresh()


# --------------------------------------------------------------------------------- tests


def test_the_key_is_asked_for_then_the_mask_and_its_classes_are_shown(page, files, shots,
                                                                      painted_server):
    wait_for(page, lambda d: "needs an API key" in d.find_element(By.ID, "model-status").text,
             "the model card to ask for a key")
    upload(page, files["bands"])
    message = error_text(page)
    assert message.startswith("This server needs an API key. Enter it in the API key field")
    assert "(HTTP 401, unauthorized, request id " in message, message
    assert page.switch_to.active_element.get_attribute("id") == "api-key"

    enter_key(page, "not-the-key")
    page.find_element(By.ID, "run").click()
    wait_for(page, lambda d: "The API key was refused. The API key is not valid. Check it"
             in d.find_element(By.ID, "error").text, "the wrong key to be refused")

    enter_key(page, "ключ")  # fetch cannot send it: said on the page, not on the console
    page.find_element(By.ID, "run").click()
    wait_for(page, lambda d: "only contain plain ASCII" in d.find_element(By.ID, "error").text,
             "the non-ASCII key to be refused")

    enter_key(page, KEY)
    page.find_element(By.ID, "run").click()
    wait_for_result(page)
    assert not visible(page, "error")
    shares = legend(page)
    assert set(shares) == BAND_LABELS, shares
    # Four equal bands (up to the stride-8 edges): each about a quarter of the image.
    for label, share in shares.items():
        assert 15 <= float(share.rstrip("%")) <= 35, (label, share)
    timings = page.find_element(By.ID, "timings").text
    for stage in ("decode", "queue", "inference", "encode", "round trip"):
        assert stage in timings, timings
    link = page.find_element(By.ID, "download")
    assert link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download") == "bands-mask.png"

    # The model card came once the key was there; this model is trained: no banner.
    wait_for(page, lambda d: visible(d, "model-card"), "the model card")
    card = page.find_element(By.ID, "model-card").text
    assert "resnet_v1_50" in card and "129 × 129" in card and "Trained\nyes" in card, card
    info = httpx.get(painted_server.url + "/v1/model", headers={"Authorization": f"Bearer {KEY}"})
    assert f"Runtime\n{info.json()['runtime']} {info.json()['runtime_version']}" in card, card
    computes = f"{info.json()['inference_precision']} — {info.json()['inference_precision_reason']}"
    assert f"Computes in\n{computes}" in card, card  # which precision runs, and why
    assert not visible(page, "untrained")
    extra = {e.get_attribute("data-param") for e in
             page.find_elements(By.CSS_SELECTOR, "#extra-options [data-param]")}
    schema = httpx.get(painted_server.url + "/openapi.json").json()
    listed = {p["name"] for p in schema["paths"]["/segment"]["post"].get("parameters", [])
              if p["in"] == "query"}
    assert extra == listed - {"format"}

    # The overlay is the input under the mask at the slider's opacity, driven by keyboard.
    red_band = (40, 80)
    assert all(abs(a - b) <= 2 for a, b in zip(overlay_pixel(page, *red_band),
                                               (224, 64, 64), strict=True))
    slider = page.find_element(By.ID, "opacity")
    slider.send_keys(Keys.END)
    assert overlay_pixel(page, *red_band) == list(PERSON_RGB)
    assert page.find_element(By.ID, "opacity-value").text == "100%"
    slider.send_keys(Keys.HOME)
    assert overlay_pixel(page, *red_band) == [255, 0, 0]
    slider.send_keys(*[Keys.ARROW_RIGHT] * 10)  # back to 50% (steps of 5) for the picture
    assert page.find_element(By.ID, "opacity-value").text == "50%"
    screenshot(page, shots, "desktop")

    # The key stays for the tab's session: a reload needs no typing.
    page.refresh()
    wait_for(page, lambda d: visible(d, "model-card"), "the model card after a reload")
    assert page.find_element(By.ID, "api-key").get_attribute("value") == KEY


def below_the_first_screen(driver: WebDriver, element_ids: list[str]) -> dict[str, float]:
    """The elements whose bottom edge lies past the first ``FIRST_SCREEN`` pixels of the page
    (or that are not displayed), with where their bottom is."""
    bottoms = driver.execute_script(
        "return Object.fromEntries(arguments[0].map((id) => {"
        "  const box = document.getElementById(id).getBoundingClientRect();"
        "  return [id, box.height > 0 ? box.bottom + window.scrollY : Infinity]; }))",
        element_ids)
    return {k: v for k, v in bottoms.items() if v > FIRST_SCREEN[1]}


def test_after_a_pick_the_image_its_mask_and_the_legend_are_on_the_first_screen(page, files,
                                                                                 shots):
    page.execute_script("sessionStorage.setItem('atrous.apiKey', arguments[0])", KEY)
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": FIRST_SCREEN[0], "height": FIRST_SCREEN[1], "deviceScaleFactor": 1,
        "mobile": False})
    page.refresh()
    wait_for(page, lambda d: visible(d, "model-card"), "the model card")
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#extra-options [data-param]"),
             "the option fields")  # all of the form laid out, as a user would see it
    result = ["input-canvas", "mask-image", "legend"]
    for name in ("bands", "tall"):  # a wide image, then a tall one
        upload(page, files[name])
        wait_for(page, lambda d, n=name: d.find_element(By.ID, "picked").text == f"Picked: "
                 f"{n}.png" and d.find_element(By.ID, "status").text == "Done.", f"{name}.png")
        assert set(legend(page)) == BAND_LABELS
        assert below_the_first_screen(page, result) == {}, name
        assert page.execute_script("return window.scrollY") == 0  # nothing jumped
        if name == "bands":
            screenshot(page, shots, "first-screen")
    # The model card folds away (and back).
    page.find_element(By.CSS_SELECTOR, "#model > summary").click()
    assert not visible(page, "model-card")
    assert "resnet_v1_50 · 21 classes" in page.find_element(By.ID, "model-summary").text
    page.find_element(By.CSS_SELECTOR, "#model > summary").click()
    assert visible(page, "model-card")


def test_picking_the_same_file_again_after_an_error_segments_again(page, files):
    wait_for(page, lambda d: "needs an API key" in d.find_element(By.ID, "model-status").text,
             "the model card to ask for a key")
    upload(page, files["bands"])
    assert "needs an API key" in error_text(page)
    enter_key(page, KEY)
    upload(page, files["bands"])  # the very same file, as a user would pick it again
    wait_for_result(page)
    assert not visible(page, "error")
    assert set(legend(page)) == BAND_LABELS


def test_readable_on_a_phone_and_usable_by_keyboard_and_paste(page, files, shots):
    page.execute_script("sessionStorage.setItem('atrous.apiKey', arguments[0])", KEY)
    # A phone: its width, touch-style (overlay) scrollbars, the meta viewport applied.
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 1, "mobile": True})
    page.refresh()
    wait_for(page, lambda d: visible(d, "model-card"), "the model card")
    # Keyboard: the first Tab reaches the file picker.
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert page.switch_to.active_element.get_attribute("id") == "image-file"
    # Paste a PNG (what Ctrl+V on a screenshot delivers).
    png = base64.b64encode(files["bands"].read_bytes()).decode()
    page.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "clip.png", {type: "image/png"}));
        document.body.dispatchEvent(new ClipboardEvent("paste",
            {clipboardData: data, bubbles: true, cancelable: true}));
    """, png)
    wait_for_result(page)
    assert set(legend(page)) == BAND_LABELS
    assert page.find_element(By.ID, "download").get_attribute("download") == "clip-mask.png"
    # Nothing wider than the screen: no sideways scrolling on a phone.
    width, inner = page.execute_script("const e = document.documentElement;"
                                       "return [e.scrollWidth, e.clientWidth]")
    assert width <= inner == PHONE[0], (width, inner)
    sticking_out = page.execute_script("""
        return [...document.querySelectorAll("main *")]
            .filter((e) => e.getBoundingClientRect().right > e.closest(".card, main")
                               .getBoundingClientRect().right + 0.5)
            .map((e) => e.id || e.tagName);""")
    assert sticking_out == [], sticking_out
    panels = page.find_elements(By.CSS_SELECTOR, ".panels figure")
    assert len({p.location["x"] for p in panels}) == 1, "panels should stack on a phone"
    screenshot(page, shots, "phone")


def test_a_dropped_image_in_each_format(page, files):
    page.execute_script("sessionStorage.setItem('atrous.apiKey', arguments[0])", KEY)
    page.refresh()
    # png: the classes are counted in the browser from the palette mask.
    Select(page.find_element(By.ID, "format")).select_by_value("png")
    drop_file(page, "dropped.png", files["bands"].read_bytes())
    wait_for_result(page)
    assert set(legend(page)) == BAND_LABELS
    # overlay: the server's JPEG, no mask, no class list (said so).
    Select(page.find_element(By.ID, "format")).select_by_value("overlay")
    page.find_element(By.ID, "run").click()
    wait_for(page, lambda d: visible(d, "overlay-image"), "the overlay image")
    assert not visible(page, "mask-image") and visible(page, "legend-note")
    link = page.find_element(By.ID, "download")
    assert link.get_attribute("download") == "dropped-overlay.jpg"
    width = page.execute_script("return document.getElementById('overlay-image').naturalWidth")
    assert width == 320


@pytest.mark.parametrize(("name", "shown"), [
    ("text", ["This file cannot be segmented. Not a supported image (accepted: PNG", "415",
              "unsupported_media_type"]),
    ("big", ["Too large. Body of", "payload_too_large", "413"]),
])
def test_server_refusals_are_readable(page, files, shots, name, shown):
    page.execute_script("sessionStorage.setItem('atrous.apiKey', arguments[0])", KEY)
    page.refresh()
    upload(page, files[name])
    message = error_text(page)
    for text in shown:
        assert text in message, message
    assert "request id" in message
    if name == "text":
        screenshot(page, shots, "error")


# Replaces some responses with what a server in another state would send (an untrained
# model, a newer runtime, more /segment options, a busy or slow server, no server).
FETCH_STUB = """
const realFetch = window.fetch.bind(window);
window.__requests = [];
window.__segment = null;  // set by the test: {status, body, headers} or "network"
window.fetch = async (input, init) => {
  const url = new URL(input, location.href);
  window.__requests.push(url.pathname + url.search);
  if (url.pathname.endsWith("/v1/model")) {
    const body = await (await realFetch(input, init)).json();
    Object.assign(body, {trained: false, weights: "random", runtime: "openvino",
                         runtime_version: "2025.1"});
    return new Response(JSON.stringify(body), {headers: {"Content-Type": "application/json"}});
  }
  if (url.pathname.endsWith("/openapi.json")) {
    const spec = await (await realFetch(input, init)).json();
    const extra = %s;  // replaces the served parameters of the same names
    const post = spec.paths["/segment"].post;
    post.parameters = post.parameters.filter((p) => !extra.some((e) => e.name === p.name));
    post.parameters.push(...extra);
    Object.assign(spec.components.schemas, {Tiling: {type: "string", enum: ["off", "auto"]}});
    return new Response(JSON.stringify(spec), {headers: {"Content-Type": "application/json"}});
  }
  if (url.pathname.endsWith("/segment") && window.__delays?.length) {
    const delay = window.__delays.shift();  // taken when the call starts, in call order
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
  if (url.pathname.endsWith("/segment") && window.__segment) {
    if (window.__segment === "network") throw new TypeError("Failed to fetch");
    const {status, body, headers} = window.__segment;
    return new Response(JSON.stringify(body), {status, headers});
  }
  return realFetch(input, init);
};
"""
EXTRA_PARAMETERS = [
    {"in": "query", "name": "tiling", "required": False,
     "schema": {"$ref": "#/components/schemas/Tiling", "default": "off"}},
    {"in": "query", "name": "flip", "required": False, "description": "average with the mirror",
     "schema": {"type": "boolean", "default": False}},
    {"in": "query", "name": "scales", "required": False,
     "schema": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}]}},
    {"in": "query", "name": "tile_size", "required": False,
     "schema": {"type": "integer", "minimum": 65, "default": 513}},
]


def test_model_card_options_and_failures_from_other_server_states(page, files, shots):
    page.execute_script("sessionStorage.setItem('atrous.apiKey', arguments[0])", KEY)
    stub(page, FETCH_STUB % json.dumps(EXTRA_PARAMETERS))
    wait_for(page, lambda d: visible(d, "untrained"), "the untrained banner")
    assert "Untrained weights (random)" in page.find_element(By.ID, "untrained").text
    card = page.find_element(By.ID, "model-card").text
    assert "Runtime\nopenvino 2025.1" in card and "Trained\nno" in card, card

    # Every query parameter the schema lists became a field; set ones are sent.
    wait_for(page, lambda d: d.find_elements(By.ID, "option-tile_size"), "the option fields")
    assert page.find_element(By.ID, "option-tiling").tag_name == "select"
    assert page.find_element(By.ID, "option-flip").get_attribute("type") == "checkbox"
    Select(page.find_element(By.ID, "option-tiling")).select_by_value("auto")
    page.find_element(By.ID, "option-flip").click()
    page.find_element(By.ID, "option-scales").send_keys("0.5, 1,1.5")
    upload(page, files["bands"])
    wait_for_result(page)
    sent = [r for r in page.execute_script("return window.__requests") if "/segment" in r][-1]
    assert sent == ("/segment?format=json&tiling=auto&flip=true&scales=0.5&scales=1"
                    "&scales=1.5&tile_size=513"), sent
    screenshot(page, shots, "untrained-with-options")

    # Two images in quick succession: the first answer comes last and must not replace the
    # second's (the second image is all red: person only).
    red = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(red, format="PNG")
    page.execute_script("window.__delays = [500, 0]")
    drop_file(page, "slow.png", files["bands"].read_bytes())
    drop_file(page, "red.png", red.getvalue())
    wait_for(page, lambda d: set(legend(d)) == {"person"}, "the second image's classes")
    time.sleep(0.8)  # the first answer has arrived by now
    assert set(legend(page)) == {"person"}
    assert page.find_element(By.ID, "download").get_attribute("download") == "red-mask.png"
    assert sum("/segment" in r for r in page.execute_script("return window.__requests")) == 3

    failures = [
        ({"status": 503, "headers": {"Retry-After": "7", "Content-Type": "application/json"},
          "body": {"error": {"code": "queue_full", "message": "the server is busy; retry later"},
                   "request_id": "r1"}},
         ["The server is not ready or too busy. The server is busy; retry later. Try again in 7 s.",
          "queue_full", "request id r1"]),
        ({"status": 504, "headers": {"Content-Type": "application/json"},
          "body": {"error": {"code": "timeout", "message": "the request deadline passed"},
                   "request_id": "r2"}},
         ["The server ran out of time for this image. The request deadline passed.",
          "(HTTP 504, timeout, request id r2)"]),
        ({"status": 422, "headers": {"Content-Type": "application/json"},
          "body": {"error": {"code": "validation_error", "message": "query.tile_size: too small"},
                   "request_id": "r3"}},
         ["The request was refused.", "tile_size: too small"]),
        ("network", ["Could not reach the server"]),
    ]
    for response, shown in failures:
        page.execute_script("window.__segment = arguments[0]", response)
        page.find_element(By.ID, "run").click()
        wait_for(page, lambda d, s=shown: visible(d, "error") and all(
            t in d.find_element(By.ID, "error").text for t in s), f"the message for {response}")


def test_a_server_with_several_models_offers_a_picker(browser, files, server_factory,
                                                      painted_saved_model, tiny_saved_model,
                                                      tmp_path):
    """The painted model is the default; picking the tiny one sends the image to it."""
    repository = tmp_path / "repository"
    for name, model in (("painted", painted_saved_model), ("tiny", tiny_saved_model)):
        (repository / name).mkdir(parents=True)
        (repository / name / "1").symlink_to(model, target_is_directory=True)
    server = server_factory({"ATROUS_MODEL_REPOSITORY": str(repository),
                             "ATROUS_DEFAULT_MODEL": "painted", "ATROUS_MAX_BATCH_SIZE": "1"})
    browser.set_window_size(*DESKTOP)
    browser.get(server.url + "/")
    wait_for(browser, lambda d: visible(d, "model-choice"), "the model picker")
    picker = Select(browser.find_element(By.ID, "model-picker"))
    assert [o.text for o in picker.options] == ["painted (version 1) — default",
                                               "tiny (version 1)"]
    assert picker.first_selected_option.get_attribute("value") == "painted"
    assert "painted, version 1" in browser.find_element(By.ID, "model-card").text

    picker.select_by_value("tiny")
    wait_for(browser, lambda d: "tiny, version 1" in d.find_element(By.ID, "model-card").text,
             "the tiny model's card")
    upload(browser, files["bands"])
    wait_for_result(browser)
    calls = httpx.get(server.url + "/metrics").text
    assert 'atrous_batch_size_count{model="tiny",version="1"} 1.0' in calls
    assert 'atrous_batch_size_count{model="painted",version="1"} 0.0' in calls
