"""The Dagster UI shows the quality checks and plots their numeric metadata: dagster-webserver on
127.0.0.1 over a temporary DAGSTER_HOME holding real check evaluations, read by headless Chromium
through the DevTools protocol. The screenshot is kept under ``kingtavo_pipeline_tests/artifacts/``."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest
from dagster._core.instance.ref import InstanceRef

from kingtavo_pipeline_tests.http_servers import free_port
from kingtavo_pipeline_tests.pipeline_helpers import SAMPLE_END, SAMPLE_START
from kingtavo_pipeline_tests.quality_helpers import quality_location, range_tags

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p),
                None)
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CORE_CHECKS = ("completeness", "validity", "money_non_negative", "core_row_has_raw_record", "volume_anomaly")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", "--window-size=1400,1000", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        lines: list[str] = []

        def endpoint():
            line = self.process.stderr.readline()
            lines.append(line)
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            return match.group(1) if match else (None if line or self.process.poll() is None else "exit")

        url = wait_for(endpoint, 60, "Chromium's DevTools endpoint", interval=0)
        assert url != "exit", "".join(lines)
        port = url.split(":")[2].split("/")[0]
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json").json() if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs it: apt-get install -y chromium)")
def test_checks_page_lists_the_checks_and_plots_their_metadata(store, clickhouse, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        result = quality_location().resolve_job_def("unified_items_job").execute_in_process(
            instance=instance, tags=range_tags(SAMPLE_START, SAMPLE_END))
        assert result.success
    (tmp_path / "location.py").write_text(
        "from kingtavo_pipeline_tests.quality_helpers import quality_location\n\ndefs = quality_location()\n")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    webserver = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
         "-f", str(tmp_path / "location.py"), "--working-directory", str(ROOT)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            assert webserver.poll() is None, "dagster-webserver exited"
            try:
                return httpx.get(f"{base}/server_info", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, "dagster-webserver")
        browser = Browser(tmp_path / "chromium-profile")
        browser.open(f"{base}/assets/core/unified_items?view=checks&checkDetail=volume_anomaly")
        text = lambda: browser.evaluate("document.body ? document.body.innerText : ''") or ""  # noqa: E731
        wait_for(lambda: all(name in text() for name in CORE_CHECKS) and "sum:amount" in text(), 90,
                 "the checks and the plot of sum:amount")
        # the numeric metadata of volume_anomaly is drawn: one chart per key
        assert wait_for(lambda: browser.evaluate("document.querySelectorAll('canvas').length"), 30, "a drawn chart") >= 1
        page = text()
        assert "Plots" in page and "history_days" in page and "core_reflects_raw" in page
        # dismiss the first-visit "join the community" dialog and bring the plots into view
        browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Skip')?.click()")
        browser.evaluate("[...document.querySelectorAll('h1,h2,h3,h4,div,span')].find(e => e.innerText === 'Plots')"
                         "?.scrollIntoView({block: 'start'})")
        time.sleep(1)  # let the charts finish animating before the screenshot
        shot = tmp_path / "quality_checks.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "quality_checks.png")
    finally:
        if browser is not None:
            browser.close()
        webserver.terminate()
        webserver.wait(timeout=30)
