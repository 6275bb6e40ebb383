"""The browser UI: its controls and checks (no browser), and an end-to-end run in headless
Chromium (Debian's chromium + chromedriver through Selenium; installed here when missing)."""

import io
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import editflow
from editflow.errors import EditflowError, LimitError, ParameterError
from editflow.limits import Limits
from editflow.methods import METHODS
from editflow.ui import controls as ctl


def test_every_parameter_has_a_control_with_the_papers_default_and_help():
    for family in ("flux", "sd3", "unet"):
        for name, m in METHODS.items():
            if family not in m.params.FAMILIES:
                continue
            resolved = m.params.for_family(family)
            for c in ctl.controls(name, family):
                assert c.help, (name, c.name)
                if c.default == "":  # derived defaults (None) stay empty: the method resolves them
                    assert "None" in c.help, (name, c.name)
                else:
                    assert c.default == getattr(resolved, c.name), (name, c.name)
    values = [c.default for c in ctl.controls("flowedit", "flux")]
    assert ctl.overrides("flowedit", "flux", values) == {}
    values[0] = 12.0  # a number box gives floats
    assert ctl.overrides("flowedit", "flux", values) == {"steps": 12}
    with pytest.raises(ParameterError, match="'n_max'"):
        ctl.overrides("flowedit", "flux", [28, "lots", 0, 1, 1.5, 5.5])
    with pytest.raises(ParameterError, match="n_max"):
        ctl.overrides("flowedit", "flux", [10, "24", 0, 1, 1.5, 5.5])  # n_max > steps, caught before the edit


def test_working_size_only_shrinks():
    assert ctl.working_size(2200, 1100, 64) == (64, 32)
    assert ctl.working_size(40, 50, 64) == (40, 50)


def test_editor_values_give_image_and_mask_and_bad_uploads_a_message():
    image = np.full((40, 50, 3), 120, np.uint8)
    layer = np.zeros((40, 50, 4), np.uint8)
    layer[5:10, 5:20, 3] = 255
    got, mask = ctl.editor_parts({"background": image, "layers": [layer], "composite": image})
    assert np.array_equal(got, image) and mask.sum() == 5 * 15 and mask[5:10, 5:20].all()
    assert ctl.editor_parts({"background": image, "layers": [np.zeros_like(layer)]})[1] is None
    rgba = np.concatenate([image, np.zeros((40, 50, 1), np.uint8)], -1)
    assert (ctl.check_image(rgba) == 255).all()  # transparent pixels on white
    rgba[..., 3] = 128  # half transparent: images.to_rgb's rule, the same as the CLI's and the API's
    expected = np.asarray(editflow.images.to_rgb(Image.fromarray(rgba)))
    assert np.array_equal(ctl.check_image(rgba), expected) and (expected > 120).all() and (expected < 255).all()
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert np.array_equal(ctl.check_image(grey), np.stack([grey] * 3, -1))
    assert np.array_equal(ctl.check_image(grey[..., None]), np.stack([grey] * 3, -1))
    assert (ctl.check_image(np.full((3, 4, 2), [0, 0], np.uint8)) == 255).all()  # LA, transparent
    assert np.array_equal(ctl.check_image(np.array([[-5.0, 300.0, np.nan]])), [[[0] * 3, [255] * 3, [0] * 3]])
    with pytest.raises(EditflowError, match="upload an image first"):
        ctl.editor_parts({"background": None, "layers": []})
    for junk in (np.array(["not", "pixels"], dtype=object), np.zeros(5), np.zeros((4, 4, 5))):
        with pytest.raises(EditflowError, match="not an image"):
            ctl.check_image(junk)
    with pytest.raises(LimitError, match="holds no pixel"):
        ctl.check_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(LimitError, match=r"the uploaded image \(4097x4096 = \d+ pixels\) is over the limit "
                       r"max_input_pixels=16777216: .*EDITFLOW_LIMIT_MAX_INPUT_PIXELS"):
        ctl.check_image(np.zeros((4096, 4097, 3), np.uint8))  # 4096 x 4096 passes by default, one more column not
    small = Limits(max_input_pixels=100)
    with pytest.raises(LimitError, match="max_input_pixels=100"):
        ctl.editor_parts({"background": np.zeros((10, 11, 3), np.uint8), "layers": []}, small)
    assert ctl.check_image(np.zeros((10, 10, 3), np.uint8), small).shape == (10, 10, 3)


def test_uploads_are_checked_before_gradio_decodes_them(tmp_path, monkeypatch):
    """The source editor's decoding: a non-image, a truncated PNG and an image over
    max_input_pixels raise gr.Error with editflow's line (no traceback logged); a good one passes."""
    gr = pytest.importorskip("gradio")
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from editflow.ui.app import _source_editor

    (tmp_path / "text.png").write_text("hello, I am not a picture")
    Image.new("RGB", (30, 20), (9, 90, 200)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])  # a header, no pixels
    Image.new("1", (600, 600)).save(tmp_path / "big.png")
    editor = _source_editor(gr, Limits(max_input_pixels=500 * 500))(type="numpy", image_mode="RGB")
    assert editor.get_block_name() == "imageeditor"  # the page draws it with Gradio's image editor
    stub = Path(sys.modules[_source_editor.__module__].__file__).with_suffix(".pyi")
    assert not stub.exists()  # Gradio's metaclass writes none into the source tree
    expected = {"text.png": ctl.NOT_AN_IMAGE, "cut.png": ctl.NOT_AN_IMAGE,
                "big.png": "the uploaded image (600x600 = 360000 pixels) is over the limit max_input_pixels=250000"}
    for name, message in expected.items():
        with pytest.raises(gr.Error) as info:
            editor.preprocess(EditorData(background=FileData(path=str(tmp_path / name))))
        assert info.value.message.startswith(message) and not info.value.print_exception, name
    with pytest.raises(gr.Error, match="not an image"):
        editor.preprocess(EditorData(composite=FileData(path=str(tmp_path / "text.png"))))
    value = editor.preprocess(EditorData(background=FileData(path=str(tmp_path / "ok.png"))))
    assert value["background"].shape == (20, 30, 3) and (value["background"][0, 0] == (9, 90, 200)).all()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's bomb bound under a raised max_input_pixels
    with pytest.raises(EditflowError, match="the uploaded image is over Pillow's own decompression-bomb bound"):
        ctl.check_upload(tmp_path / "ok.png", Limits(max_input_pixels=10**9))


# -- end to end in a real browser ------------------------------------------------------------------


def _ensure_browser() -> tuple[str, str]:
    """Debian's chromium and chromedriver, and the Python packages (installed when missing)."""
    for module, package in (("selenium", "selenium"), ("gradio", "gradio>=5")):
        try:
            __import__(module)
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", package], check=True)
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        apt = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(apt, check=True, capture_output=True, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "chromium / chromedriver could not be installed"
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chrome():
    """A headless Chromium driven by Selenium (quit it when done)."""
    browser, driver_path = _ensure_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver_path))


UPLOAD_LIMIT = Limits(max_input_pixels=200 * 200)  # the browser tests' server: small enough to test cheaply


@pytest.fixture(scope="module")
def browser_app(tmp_path_factory):
    from editflow.ui.app import launch

    port = _free_port()
    app = launch("shapes", port=port, block=False, limits=UPLOAD_LIMIT)
    try:
        driver = _chrome()
    except BaseException:
        app.close()
        raise
    try:
        yield driver, f"http://127.0.0.1:{port}/"
    finally:
        driver.quit()
        app.close()


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _upload_and_run(driver, url, path, source: str = "a scene", target: str = "another scene") -> None:
    """A fresh page: upload ``path`` through the editor's file input, type prompts, press Edit."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#source input[type=file]").send_keys(str(path))
    driver.find_element(By.CSS_SELECTOR, "#source-prompt textarea").send_keys(source)
    driver.find_element(By.CSS_SELECTOR, "#target-prompt textarea").send_keys(target)
    time.sleep(1.0)  # the editor finishes loading the upload
    driver.find_element(By.CSS_SELECTOR, "#run").click()


def _result(driver, wait, previous: str | None) -> tuple[np.ndarray, str]:
    from selenium.webdriver.common.by import By

    def ready(d):
        imgs = d.find_elements(By.CSS_SELECTOR, "#result img")
        src = imgs[0].get_attribute("src") if imgs else None
        return src if src and src != previous else False

    src = wait.until(ready)
    return np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(src).read())).convert("RGB")), src


def _seconds(driver) -> float:
    from selenium.webdriver.common.by import By

    return float(re.search(r"([\d.]+) s", driver.find_element(By.CSS_SELECTOR, "#info").text).group(1))


def test_edit_in_a_real_browser(browser_app, tmp_path):
    """Upload a shapes image, type prompts, FlowEdit on the shapes model, the result appears and
    differs from the source; then ODE inversion twice with two targets: the second reuses the
    inversion and takes less time. EDITFLOW_UI_SCREENSHOTS=DIR keeps before/after screenshots."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from editflow.ui.app import shapes_example

    driver, url = browser_app
    image, source, target = shapes_example(3)
    Image.fromarray(image).save(tmp_path / "source.png")
    shots = os.environ.get("EDITFLOW_UI_SCREENSHOTS")
    driver.get(url)
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#source input[type=file]").send_keys(str(tmp_path / "source.png"))
    driver.find_element(By.CSS_SELECTOR, "#source-prompt textarea").send_keys(source)
    driver.find_element(By.CSS_SELECTOR, "#target-prompt textarea").send_keys(target)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source canvas"))
    time.sleep(1.0)  # the editor finishes loading the upload
    if shots:
        driver.save_screenshot(os.path.join(shots, "ui-before.png"))
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    edited, src = _result(driver, wait, None)
    shown = np.asarray(Image.fromarray(image).resize(edited.shape[1::-1], Image.LANCZOS))  # the page enlarges
    assert np.abs(edited.astype(int) - shown.astype(int)).mean() > 1.0  # the edit changed the image
    download = driver.find_element(By.CSS_SELECTOR, "#download a").get_attribute("href")
    true_size = np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(download).read())).convert("RGB"))
    assert true_size.shape == image.shape and np.abs(true_size.astype(int) - image.astype(int)).mean() > 1.0
    assert "flowedit on shapes: 24 model calls" in driver.find_element(By.CSS_SELECTOR, "#info").text
    if shots:
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(os.path.join(shots, "ui-after.png"))

    box = driver.find_element(By.CSS_SELECTOR, "#method input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("ode_inversion", Keys.ENTER)
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    _, src = _result(driver, wait, src)
    wait.until(lambda d: "ode_inversion" in d.find_element(By.CSS_SELECTOR, "#info").text)
    first = _seconds(driver)
    assert "inversion computed and cached" in driver.find_element(By.CSS_SELECTOR, "#info").text
    assert re.findall(r"(\d+) model calls", driver.find_element(By.CSS_SELECTOR, "#info").text) == ["56"]
    field = driver.find_element(By.CSS_SELECTOR, "#target-prompt textarea")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(target.replace(" on a ", " and nothing else, on a ", 1))
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    _result(driver, wait, src)
    wait.until(lambda d: "reused" in d.find_element(By.CSS_SELECTOR, "#info").text)
    second = _seconds(driver)
    print(f"ode_inversion in the browser: first edit {first:.2f} s, re-edit with the cached inversion {second:.2f} s")
    calls = [int(n) for n in re.findall(r"(\d+) model calls", driver.find_element(By.CSS_SELECTOR, "#info").text)]
    assert calls == [28]  # ODE inversion's 56 calls halved: only the editing ran (counted; timings swing on a shared CPU)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#history img")) >= 3  # the session's history

    # a larger image is edited at the model's working size, and the page says so
    Image.fromarray(image).resize((128, 128), Image.NEAREST).save(tmp_path / "large.png")
    driver.find_element(By.CSS_SELECTOR, "#source input[type=file]").send_keys(str(tmp_path / "large.png"))
    time.sleep(1.0)
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    wait.until(lambda d: "resized from 128x128 to 64x64" in d.find_element(By.CSS_SELECTOR, "#info").text)
    # an image over the server's max_input_pixels is refused with the limit's line
    Image.new("RGB", (250, 200), (90, 90, 90)).save(tmp_path / "huge.png")
    _upload_and_run(driver, url, tmp_path / "huge.png", source, target)
    refusal = "the uploaded image (250x200 = 50000 pixels) is over the limit max_input_pixels=40000"
    wait.until(lambda d: refusal in _body(d))
    assert "Could not preprocess" not in _body(driver)


def test_non_image_uploads_get_editflows_message(browser_app, tmp_path):
    """A text file (named .txt, or .png) through the page's file input: the editor does not take
    it (no request carries it), so Edit says to upload an image, with no Gradio dump. Sent through
    the API (gradio_client), the same file reaches the server and gets editflow's line."""
    from gradio_client import Client, handle_file
    from selenium.webdriver.support.ui import WebDriverWait

    driver, url = browser_app
    for name in ("notes.txt", "text.png"):
        (tmp_path / name).write_text("hello, I am not a picture")
        _upload_and_run(driver, url, tmp_path / name)
        WebDriverWait(driver, 30).until(lambda d: ctl.NO_IMAGE in _body(d))
        assert "Could not preprocess" not in _body(driver) and "imageeditor" not in _body(driver)
    client = Client(url, verbose=False)
    value = {"background": handle_file(str(tmp_path / "text.png")), "layers": [], "composite": None}
    with pytest.raises(Exception) as info:
        client.predict(value, "a scene", "another scene", api_name="/on_run")
    assert str(info.value) == ctl.NOT_AN_IMAGE
