"""The attack the limits stop: one UI request with ``steps = 10**9`` (it once grew the server to
19 GB until the kernel killed it). The real server (``python -m editflow ui``, the shapes model)
runs as a subprocess and is driven in headless Chromium (test_ui.py's helpers)."""

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from test_ui import _chrome, _free_port, _result

PEAK_RSS_LIMIT = 2 * 1024**3  # bytes


def _peak_rss(pid: int) -> int:
    """The process's peak resident size (VmHWM) in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", fh.read(), re.M).group(1)) * 1024


@pytest.fixture()
def server(tmp_path):
    """``python -m editflow ui --port P`` as a subprocess (default limits, HF offline); yields the
    process, its URL and its stderr's path; killed at the end, pass or fail."""
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    env = {k: v for k, v in env.items() if not k.startswith("EDITFLOW_LIMIT_")}  # the defaults
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "editflow", "ui", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server exited: {err.read_text()[-2000:]}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the server did not listen within 60 s"
            time.sleep(0.2)
        yield proc, f"http://127.0.0.1:{port}/", err
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_billion_steps_is_refused_at_once_and_the_server_stays_small(server):
    """steps=1000000000 in FlowEdit's field: the page shows the max_steps refusal within 1 s of
    the click; a normal edit still works; the server's peak RSS stays under 2 GB and its stderr
    holds no traceback."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    proc, url, err = server
    driver = _chrome()
    try:
        wait = WebDriverWait(driver, 60)

        def example():  # a fresh page with a shapes example and its prompts
            driver.get(url)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#example"))
            driver.find_element(By.CSS_SELECTOR, "#example").click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#target-prompt textarea").get_attribute("value"))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source canvas"))
            time.sleep(0.5)  # the editor finishes drawing the example

        example()
        driver.find_element(By.CSS_SELECTOR, "#parameters > button").click()  # open the accordion
        steps = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#flowedit-steps input"))[0]
        assert steps.get_attribute("value") == "28"
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("1000000000", Keys.TAB)
        time.sleep(0.3)  # the page takes the value
        def toast(d):  # the error shown on the page (Gradio's toast)
            return " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))

        start = time.monotonic()
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        WebDriverWait(driver, 5, poll_frequency=0.02).until(lambda d: "max_steps" in toast(d))  # or fail early
        refused = time.monotonic() - start
        print(f"steps=1000000000 refused on the page {refused:.2f} s after the click")
        assert "steps=1000000000 is over the limit max_steps=1000: use fewer steps" in toast(driver)
        assert refused < 1.0

        example()  # default parameters
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        edited, _ = _result(driver, WebDriverWait(driver, 60), None)
        assert edited.std() > 1.0
        assert "flowedit on shapes: 24 model calls" in driver.find_element(By.CSS_SELECTOR, "#info").text
    finally:
        driver.quit()
    peak = _peak_rss(proc.pid)
    print(f"server peak RSS (VmHWM): {peak / 1024**2:.0f} MiB")
    assert peak < PEAK_RSS_LIMIT
    log = err.read_text()
    assert "Traceback" not in log, log[-3000:]
