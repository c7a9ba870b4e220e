"""The web page in a real headless browser (Debian chromium + chromedriver, selenium).

Skipped when chromium, chromedriver or selenium are not installed:
    apt-get install -y chromium chromium-driver && pip install selenium
Leaves screenshots in $CARMASK_TEST_SCREENSHOTS where set, else in pytest's
temporary folder (never in the checkout).
"""

import json
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
uvicorn = pytest.importorskip("uvicorn")
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from live_server import live_server  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from carmask.predict import Predictor  # noqa: E402
from carmask.serve import create_app  # noqa: E402

pytestmark = pytest.mark.slow  # the quick run (-m "not slow") leaves this module out


@pytest.fixture(scope="module")
def server(rgb_predictor):
    """The app under uvicorn on a free loopback port, in a background thread."""
    app = create_app(rgb_predictor)
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium; `browser.shots`: the folder for screenshots."""
    profile = tempfile.mkdtemp(prefix="carmask-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Offline but for the server: other hosts resolve to nothing, and anything not on
    # loopback goes to a proxy that is not there (Chromium sends loopback direct).
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        "--hide-scrollbars",
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})  # every request seen
    downloads = Path(profile) / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    # An explicit driver path: selenium-manager never runs, nothing is downloaded.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    given = os.environ.get("CARMASK_TEST_SCREENSHOTS")
    driver.shots = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    driver.shots.mkdir(parents=True, exist_ok=True)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _results(driver, count, timeout=120, failed=0):
    """Wait until `count` cards are done (or failed); return the done cards' result images."""

    def settled(d):
        cards = d.find_elements(By.CSS_SELECTOR, ".card")
        states = [c.get_attribute("data-state") for c in cards]
        return len(cards) == count and all(s in ("done", "error") for s in states) and cards

    cards = WebDriverWait(driver, timeout).until(settled)
    errors = [c.text for c in cards if c.get_attribute("data-state") == "error"]
    assert len(errors) == failed, errors
    images = driver.find_elements(By.CSS_SELECTOR, ".card img.result")
    WebDriverWait(driver, 10).until(
        lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images
        )
    )
    return images


@pytest.fixture
def gated_server(rgb_predictor):
    """A server whose cut-outs wait for `gate` (open unless a test closes it) and
    note the photos they were asked for: (url, gate, photos)."""
    app = create_app(rgb_predictor)
    state, gate, photos = app.state.service, threading.Event(), []
    real = state.cut

    def cut(items, background):
        photos.extend(name for name, _ in items)
        gate.wait()
        return real(items, background)

    state.cut = cut
    gate.set()
    try:
        with live_server(app) as url:
            yield url, gate, photos
    finally:
        gate.set()


def _drop(driver, paths, target="drop"):
    """Files dragged from the desktop and dropped on the element's centre: Chromium's own
    drag and drop (trusted events, hit-tested where a user would drop), not a script's."""
    x, y = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();return [r.left + r.width / 2, r.top + r.height / 2];",
        driver.find_element(By.ID, target),
    )
    data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        driver.execute_cdp_cmd("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})


def _states(driver) -> dict[str, int]:
    states = [c.get_attribute("data-state") for c in driver.find_elements(By.CSS_SELECTOR, ".card")]
    return {state: states.count(state) for state in set(states)}


def _settled(driver, timeout=120):
    """Wait until there are cards and none is queued or at work; the cards."""
    WebDriverWait(driver, timeout).until(lambda d: _states(d) and set(_states(d)) <= {"done", "error"})
    return driver.find_elements(By.CSS_SELECTOR, ".card")


def _photos(synth_data, folder, count):
    """`count` synthetic photos named shot-NNN.jpg (no view numbers: each is cut out on its own)."""
    folder.mkdir(exist_ok=True)
    sources = sorted((synth_data / "train").glob("*.jpg")) + sorted((synth_data / "test").glob("*.jpg"))
    paths = [folder / f"shot-{n:03d}.jpg" for n in range(1, count + 1)]
    for path, source in zip(paths, sources):
        path.write_bytes(source.read_bytes())
    return paths


def test_photos_dropped_on_the_drop_zone_are_added_once(gated_server, browser, synth_data, tmp_path):
    url, _, photos = gated_server
    paths = _photos(synth_data, tmp_path / "three", 3)
    browser.get(url + "/")
    _drop(browser, paths)
    cards = _settled(browser)
    assert sorted(c.find_element(By.CSS_SELECTOR, ".name").text for c in cards) == [p.name for p in paths]
    assert sorted(photos) == [p.name for p in paths]  # one request each
    assert [a.get_attribute("download") for a in browser.find_elements(By.CSS_SELECTOR, ".card a.button")] == [
        p.stem + ".png" for p in paths
    ]
    assert browser.find_element(By.ID, "progress").text == "3 of 3 done"


def test_a_hundred_dropped_photos_show_their_progress(gated_server, browser, synth_data, tmp_path):
    """100 photos dropped: two at work, the others queued, each card and the overall
    progress saying which; at the end 100 of 100 done and a zip of 100 cut-outs."""
    url, gate, photos = gated_server
    paths = _photos(synth_data, tmp_path / "hundred", 100)
    gate.clear()  # the first two requests wait at the server
    browser.get(url + "/")
    _drop(browser, paths)
    WebDriverWait(browser, 60).until(lambda d: _states(d) == {"working": 2, "queued": 98})
    pills = [p.text for p in browser.find_elements(By.CSS_SELECTOR, ".card .pill")]
    assert pills.count("Cutting out…") == 2 and pills.count("Queued") == 98
    assert browser.find_element(By.ID, "progress").text == "0 of 100 done · 2 cutting out · 98 queued"
    browser.save_screenshot(str(browser.shots / "browser-progress.png"))
    gate.set()
    WebDriverWait(browser, 600).until(lambda d: d.find_element(By.ID, "progress").text == "100 of 100 done")
    assert len(_results(browser, 100)) == 100 and len(photos) == 100
    browser.find_element(By.ID, "download-all").click()
    target = browser.downloads / "cutouts.zip"
    WebDriverWait(browser, 60).until(lambda d: target.is_file() and zipfile.is_zipfile(target))
    with zipfile.ZipFile(target) as archive:
        assert sorted(archive.namelist()) == [p.stem + ".png" for p in paths] and archive.testzip() is None
    target.unlink()
    browser.save_screenshot(str(browser.shots / "browser-hundred.png"))


def _requested(driver) -> list[str]:
    """Every URL the browser asked for since the last call (Chromium's performance log)."""
    events = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]


def _refused_by_the_policy(driver) -> list[str]:
    """The inline scripts and styles the browser refused since the last call (the CSP's
    console errors). Not counted: ReDoc's search worker from a blob: URL, refused as ever
    (ReDoc searches without it)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] and "inline" in entry["message"]
    ]


def test_the_api_pages_render_offline(server, browser):
    """/docs (Swagger UI) and /redoc render with every request to the server: the
    browser can reach nothing else, and asks for nothing else."""
    _requested(browser), _refused_by_the_policy(browser)
    browser.get(server + "/docs")
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 4)
    assert "/v1.0/removebg" in browser.find_element(By.ID, "swagger-ui").text
    browser.save_screenshot(str(browser.shots / "browser-docs.png"))
    browser.get(server + "/redoc")
    WebDriverWait(browser, 60).until(
        lambda d: "remove.bg-compatible cut-out" in d.find_element(By.TAG_NAME, "body").text
    )
    browser.save_screenshot(str(browser.shots / "browser-redoc.png"))
    urls = _requested(browser)
    assert any(url.endswith("/swagger-ui-bundle.js") for url in urls)
    assert any(url.endswith("/openapi.json") for url in urls)
    local = (server + "/", "data:", "blob:", "about:", "chrome:")  # chrome: the browser's own pages, no network
    assert not [url for url in urls if not url.startswith(local)], urls
    assert not _refused_by_the_policy(browser)  # their inline blocks are admitted by hash


def test_upload_and_see_the_cutout(server, browser, synth_data, tmp_path):
    photo = tmp_path / "synthcar_05.jpg"
    photo.write_bytes(sorted((synth_data / "test").glob("*_05.jpg"))[0].read_bytes())
    _refused_by_the_policy(browser)
    browser.get(server + "/")
    assert "carmask" in browser.title
    browser.find_element(By.ID, "file-input").send_keys(str(photo))
    [image] = _results(browser, 1)
    assert not _refused_by_the_policy(browser)  # the script and styles are files: nothing inline
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == [192, 128]
    assert "checker" in image.find_element(By.XPATH, "..").get_attribute("class")
    link = browser.find_element(By.CSS_SELECTOR, ".card a.button")
    assert link.get_attribute("download") == "synthcar_05.png"
    assert link.get_attribute("href").startswith("blob:")
    browser.save_screenshot(str(browser.shots / "browser.png"))


def _corners(driver, image) -> list[list[int]]:
    """The RGBA of a result image's four corner pixels (two pixels in), as the browser decoded it."""
    return driver.execute_script(
        """const i = arguments[0], c = document.createElement('canvas');
        c.width = i.naturalWidth; c.height = i.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(i, 0, 0);
        return [[2, 2], [c.width - 3, 2], [2, c.height - 3], [c.width - 3, c.height - 3]].map(
            ([x, y]) => Array.from(g.getImageData(x, y, 1, 1).data));""",
        image,
    )


def _api_calls(driver) -> list[str]:
    """The paths of the /api/ requests the page made since the last call."""
    return [url.split("//", 1)[1].split("/", 1)[1] for url in _requested(driver) if "/api/" in url]


def test_set_of_views_and_green_background(server, browser, synth_data, tmp_path):
    """Three views of one car go to /api/cutout-set, as one request; a new background
    (studio green, #00b900) redoes every photo, as a set again, and the studio around
    the car in each result is that green."""
    _requested(browser)  # what earlier tests asked for is not this test's
    browser.get(server + "/")
    paths = sorted((synth_data / "test").glob("*.jpg"))[:3]
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))
    assert len(_results(browser, 3)) == 3
    assert _api_calls(browser) == ["api/cutout-set"]  # one set, never photo by photo
    browser.find_element(By.CSS_SELECTOR, "input[name=bg][value=green]").find_element(By.XPATH, "..").click()
    WebDriverWait(browser, 30).until(
        lambda d: all(
            "checker" not in f.get_attribute("class") for f in d.find_elements(By.CSS_SELECTOR, ".after-frame")
        )
    )
    images = _results(browser, 3)
    assert len(images) == 3
    assert _api_calls(browser) == ["api/cutout-set"]  # redone, as a set
    for image in images:  # the corners are studio, far from the car: the background there
        assert all(
            abs(r) <= 2 and abs(g - 185) <= 2 and abs(b) <= 2 and a == 255 for r, g, b, a in _corners(browser, image)
        ), _corners(browser, image)
    browser.save_screenshot(str(browser.shots / "browser-set.png"))


def test_a_set_downloads_as_one_zip_and_a_rejected_file_says_why(server, browser, synth_data, tmp_path):
    import zipfile

    browser.get(server + "/")
    assert not browser.find_element(By.ID, "clear").is_displayed()  # nothing to clear on an empty page
    views = sorted((synth_data / "test").glob("*.jpg"))
    assert len(views) == 16
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in [*views, notes]))
    assert len(_results(browser, 17, failed=1)) == 16
    [rejected] = [
        c for c in browser.find_elements(By.CSS_SELECTOR, ".card") if c.get_attribute("data-state") == "error"
    ]
    assert "notes.txt" in rejected.text and "Not a photo" in rejected.text
    button = browser.find_element(By.ID, "download-all")
    assert button.is_displayed() and browser.find_element(By.ID, "clear").is_displayed()
    button.click()
    target = browser.downloads / "cutouts.zip"
    WebDriverWait(browser, 30).until(lambda d: target.is_file() and zipfile.is_zipfile(target))
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        assert archive.testzip() is None
    assert sorted(names) == sorted(p.stem + ".png" for p in views)
    browser.save_screenshot(str(browser.shots / "browser-download-all.png"))


def test_a_file_over_the_upload_limit_is_refused_before_sending(rgb_model, browser, synth_data, tmp_path):
    import numpy as np
    from PIL import Image

    photo = sorted((synth_data / "train").glob("*_05.jpg"))[0]
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big)
    with live_server(create_app(Predictor(model=rgb_model, device="cpu"), max_upload_bytes=100_000)) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 10).until(lambda d: "v" in d.find_element(By.ID, "meta").text)  # limits known
        browser.find_element(By.ID, "file-input").send_keys(f"{photo}\n{big}")
        _results(browser, 2, failed=1)
    [refused] = [c for c in browser.find_elements(By.CSS_SELECTOR, ".card") if c.get_attribute("data-state") == "error"]
    assert "big.png" in refused.text and "over this server's upload limit of 0.1 MiB" in refused.text


def test_a_photo_taken_out_of_its_set_says_so(browser, synth_data, tmp_path):
    """With the shipped models, a view of another size is cut out alone; its card says so."""
    from PIL import Image

    views = sorted((synth_data / "test").glob("*.jpg"))[:4]
    paths = [tmp_path / p.name for p in views]
    for view, path in zip(views, paths):
        path.write_bytes(view.read_bytes())
    Image.open(views[3]).resize((384, 256)).save(paths[3])
    with live_server(create_app(Predictor(device="cpu"))) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))
        assert len(_results(browser, 4)) == 4
        notes = [n.text for n in browser.find_elements(By.CSS_SELECTOR, ".card .note") if n.is_displayed()]
    assert len(notes) == 1 and paths[3].name in notes[0] and "not the size of the other views" in notes[0]


def test_same_names_get_their_own_cutouts_and_focus_shows(server, browser, synth_data, tmp_path):
    """Three views of a car in a/ and three other photos with the same names in
    b/: each card shows its own cut-out and downloads under its own name. Tab
    reaches the (invisible) file input, and the drop zone shows the focus."""
    from PIL import Image, ImageOps
    from selenium.webdriver.common.keys import Keys

    views = sorted((synth_data / "test").glob("*.jpg"))[:3]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    paths = [tmp_path / "a" / f"car_0{n}.jpg" for n in (1, 2, 3)] + [
        tmp_path / "b" / f"car_0{n}.jpg" for n in (1, 2, 3)
    ]
    for view, a, b in zip(views, paths[:3], paths[3:]):
        a.write_bytes(view.read_bytes())
        ImageOps.mirror(Image.open(view)).save(b)
    browser.get(server + "/")
    webdriver.ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "file-input"
    drop = browser.find_element(By.ID, "drop")
    assert browser.execute_script("return getComputedStyle(arguments[0]).outlineStyle", drop) == "solid"
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))
    images = _results(browser, 6)
    pixels = [
        browser.execute_script(
            """const c = document.createElement('canvas'), i = arguments[0];
        c.width = i.naturalWidth; c.height = i.naturalHeight; c.getContext('2d').drawImage(i, 0, 0);
        return c.toDataURL();""",
            image,
        )
        for image in images
    ]
    assert len(set(pixels)) == 6
    links = browser.find_elements(By.CSS_SELECTOR, ".card a.button")
    assert [link.get_attribute("download") for link in links] == [
        "car_01.png",
        "car_02.png",
        "car_03.png",
        "car_01-2.png",
        "car_02-2.png",
        "car_03-2.png",
    ]
    assert "car_01-2.jpg" in browser.find_elements(By.CSS_SELECTOR, ".card .note")[3].text


def test_a_server_with_a_key_asks_for_it(rgb_model, browser, synth_data):
    """--api-key: the page shows a key field; without the key a card says so, and
    entering it redoes the failed photo."""
    from selenium.webdriver.common.keys import Keys

    photo = sorted((synth_data / "test").glob("*_05.jpg"))[0]
    with live_server(create_app(Predictor(model=rgb_model, device="cpu"), api_key="k")) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "key-box").is_displayed())
        browser.find_element(By.ID, "file-input").send_keys(str(photo))
        _results(browser, 1, failed=1)
        assert "X-Api-Key" in browser.find_element(By.CSS_SELECTOR, ".card").text
        key = browser.find_element(By.ID, "api-key")
        key.send_keys("k", Keys.TAB)
        WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".card").get_attribute("data-state") == "done"
        )
