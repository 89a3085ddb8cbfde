"""report.html in a real browser: headless Chromium (Debian's ``chromium``) driven over the
DevTools protocol opens the report of a real run, finds every plot rendered, sees no console
error, saves a full-page screenshot, and turns names typed into the page (the clusters' names,
the labels of the images it lists to check) into a dev-labels CSV that seeds and names the next
run.

Set ``GOGGLES_SCREENSHOT_DIR`` to keep the screenshot and the report.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from goggles.parameters import RunParameters
from goggles.pipeline.inprocess import run_inprocess
from tests.conftest import CUB_DEV, cub_task
from tests.integration.servers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium: `apt-get install chromium` (Debian) — .ci/run installs "
                "it when running as root")


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, executable: str, profile: Path) -> None:
        import websocket  # websocket-client, installed with kfp's kubernetes client

        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"

        def devtools_port() -> int | None:
            text = port_file.read_text().strip() if port_file.is_file() else ""
            return int(text.split()[0]) if text else None

        try:
            port = wait_until(devtools_port, self.process, "Chromium's DevTools port", 60)
        except RuntimeError:
            self.close()
            raise
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            pages = [t for t in json.load(reply) if t["type"] == "page"]
        # no Origin header: Chromium 111+ refuses a websocket whose origin it was not told of
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60,
                                                  suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} in {timeout} s")
            self.events.append(json.loads(self.socket.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(str(details.get("exception", {}).get("description")
                                 or details.get("text"))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                  "assert"):
                found.append(json.dumps(params.get("args"))[:300])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"].get("text", "")[:300])
        return found

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def open_page(browser: DevTools, path: Path) -> None:
    for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
        browser.call(domain)
    browser.call("Page.navigate", url=path.resolve().as_uri())
    browser.wait_for("Page.loadEventFired")


def screenshot(browser: DevTools, path: Path) -> Image.Image:
    size = browser.call("Page.getLayoutMetrics")["cssContentSize"]
    browser.call("Emulation.setDeviceMetricsOverride", width=1280,
                 height=int(min(size["height"], 16000)), deviceScaleFactor=1, mobile=False)
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return Image.open(path)


def _synthetic_source(root: Path) -> Path:
    """Two visually distinct classes (red discs, blue bars on noise), 16 images each."""
    rng = np.random.default_rng(0)
    for name, shape in (("discs", "ellipse"), ("bars", "rectangle")):
        folder = root / "source" / name
        folder.mkdir(parents=True)
        for i in range(16):
            noise = rng.integers(90, 170, size=(160, 200, 3), dtype=np.uint8)
            image = Image.fromarray(noise)
            draw = ImageDraw.Draw(image)
            x, y = rng.integers(10, 90), rng.integers(10, 60)
            if shape == "ellipse":
                draw.ellipse((x, y, x + 80, y + 80), fill=(220, 30, 30))
            else:
                draw.rectangle((x, y, x + 100, y + 30), fill=(30, 40, 220))
            image.save(folder / f"{name}-{i:02d}.jpg", quality=90)
    return root / "source"


EXPECTED_PLOTS = {"heatmap", "confusion", "trace", "histogram"}


def test_report_opens_in_chromium_with_every_plot(tmp_path: Path) -> None:
    executable = _browser()
    if CUB_DEV.is_dir():
        source, expected_accuracy = cub_task(tmp_path, "001", "014", limit=24), 0.9
    else:
        source, expected_accuracy = _synthetic_source(tmp_path), 0.9
    out = tmp_path / "out"
    params = RunParameters(source_uri=str(source), output_uri=str(out), num_classes=2,
                           backbone="mobilenet_v2", seed=0, follow_symlinks=True)
    metrics = run_inprocess(params)
    assert metrics["accuracy"] >= expected_accuracy, metrics
    report = out / "report.html"
    assert report.stat().st_size < 5 * 2**20

    browser = DevTools(executable, tmp_path / "profile")
    try:
        open_page(browser, report)
        plots = browser.evaluate("""Array.from(document.querySelectorAll('[data-plot]')).map(f => {
            const r = f.getBoundingClientRect();
            const imgs = Array.from(f.querySelectorAll('img'));
            return {kind: f.dataset.plot, width: r.width, height: r.height,
                    svg: f.querySelectorAll('svg *').length,
                    images: imgs.map(i => i.complete && i.naturalWidth > 0)};
        })""")
        kinds = {p["kind"] for p in plots}
        # the EM traces are drawn only when EM iterated more than once
        expected = EXPECTED_PLOTS - (set() if metrics["em_iterations"] > 1 else {"trace"})
        assert kinds >= expected and ("trace" in kinds) == (metrics["em_iterations"] > 1), kinds
        for plot in plots:
            assert plot["width"] > 100 and plot["height"] > 100, plot
            assert plot["svg"] > 5 or (plot["images"] and all(plot["images"])), plot
        broken = browser.evaluate("""Array.from(document.images).filter(
            i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)""")
        assert broken == []
        counts = browser.evaluate("""({images: document.images.length,
            clusters: document.querySelectorAll('.cluster').length,
            patches: document.querySelectorAll('img[alt^="prototype"]').length})""")
        assert counts["clusters"] == 2 and counts["patches"] >= 2 and counts["images"] >= 20

        # a person labels the images the page asks for with their class (their folder's name)
        first = pq.read_table(out / "labels.parquet")
        truth = {u: u.rsplit("/", 2)[-2] for u in first["uri"].to_pylist()}
        listed = browser.evaluate("""Array.from(document.querySelectorAll('input.image-label'))
            .map(i => i.dataset.uri)""")
        assert len(listed) == 8 and len(set(listed)) == 8, listed  # 4 per class
        assert browser.evaluate("""document.querySelectorAll(
            '#goggles-classes option').length""") >= 2  # the run's class names offered
        browser.evaluate(f"""(function(truth){{document.querySelectorAll('input.image-label')
            .forEach(i => {{ i.value = truth[i.dataset.uri]; }});}})({json.dumps(truth)})""")
        csv = browser.evaluate("gogglesDevLabels()")
        shot = screenshot(browser, tmp_path / "report.png")
        assert browser.errors() == []
    finally:
        browser.close()
    assert shot.width == 1280 and shot.height > 1500
    # the screenshot is not blank: the heatmap and pictures give it many colours
    assert len(shot.convert("RGB").getcolors(2**20) or []) > 1000
    keep = os.environ.get("GOGGLES_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", Path(keep) / "report.png")
        shutil.copy(report, Path(keep) / "report.html")

    lines = csv.strip().split("\n")
    # exactly the images labeled in the page: no cluster is named from its exemplars
    assert lines[0] == "uri,label" and len(lines) == 1 + 8
    (tmp_path / "dev-labels.csv").write_text(csv)
    rerun = run_inprocess(RunParameters(
        source_uri=str(source), output_uri=str(out), num_classes=2, backbone="mobilenet_v2",
        seed=0, dev_labels_uri=str(tmp_path / "dev-labels.csv"), follow_symlinks=True))
    named = pq.read_table(out / "labels.parquet")
    assert set(named["label_name"].to_pylist()) <= set(truth.values())  # names from the labels
    assert rerun["dev_set"]["n_images"] == 8 and rerun["dev_set"]["accuracy"] == 1.0
    # the labeled images are seeds of the rerun: each now carries the class it was given
    given = dict(zip(named["uri"].to_pylist(), named["label_name"].to_pylist(), strict=True))
    assert all(given[u] == truth[u] for u in listed)
    assert "accuracy_unlabeled" in rerun["dev_set"]
    assert rerun["dev_set"]["n_unlabeled"] == rerun["n_images"] - 8
    # the rerun's page lists other images to check, and keeps the dev labels in its CSV
    browser = DevTools(executable, tmp_path / "profile-2")
    try:
        open_page(browser, out / "report.html")
        again = browser.evaluate("""Array.from(document.querySelectorAll('input.image-label'))
            .map(i => i.dataset.uri)""")
        rows = browser.evaluate("gogglesDevLabels()").strip().split("\n")
        assert browser.errors() == []
    finally:
        browser.close()
    assert len(again) == 8 and not set(again) & set(listed) and len(rows) == 1 + 8


def test_the_browser_check_sees_errors_and_broken_images(tmp_path: Path) -> None:
    """The checks above can fail: a script error, a console error and an image that does not
    decode are all reported."""
    executable = _browser()
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><img alt='bad' src='data:image/png;base64,AAAA'>"
                    "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    browser = DevTools(executable, tmp_path / "profile")
    try:
        open_page(browser, page)
        broken = browser.evaluate("""Array.from(document.images).filter(
            i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)""")
        errors = browser.errors()
    finally:
        browser.close()
    assert broken == ["bad"]
    assert any("boom" in e for e in errors) and any("undefinedFunction" in e for e in errors)


def _first_screen(browser: DevTools, path: Path) -> dict[str, Any]:
    """Open ``path`` in a 1400×900 window; the boxes (CSS pixels from the page's top) of the
    verdict, the "Images to check" heading, every image listed to check and the summary."""
    browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                 deviceScaleFactor=1, mobile=False)
    open_page(browser, path)
    return browser.evaluate("""(function(){
        function box(e){ if(!e) return null; const r = e.getBoundingClientRect();
            return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY,
                    visible: r.width > 0 && r.height > 0}; }
        return {verdict: box(document.querySelector('#verdict')),
                review: box(document.querySelector('#review')),
                summary: box(document.querySelector('#summary')),
                listed: Array.from(document.querySelectorAll('figure.review')).map(box),
                text: document.querySelector('#verdict').innerText};
    })()""")


def _unsure(out: Path) -> Path:
    """The run's report again with its labels' confidence spread from 0.5 to 1 (a run whose
    labels are not all sure), beside the original: ``report-unsure.html``."""
    from goggles.io import storage
    from goggles.io.artifacts import output_paths
    from goggles.report.page import write_report

    paths = output_paths(str(out))
    labels = pq.read_table(paths["labels"])
    column = labels.schema.get_field_index("confidence")
    spread = pa.array(np.linspace(0.5, 1.0, labels.num_rows), labels.schema.field(column).type)
    pq.write_table(labels.set_column(column, labels.schema.field(column), spread),
                   paths["labels"])
    report = out / "report-unsure.html"
    write_report(str(report), storage.read_json(paths["metrics"]), labels_uri=paths["labels"],
                 inference_uri=paths["inference"], prototypes_uri=paths["prototypes"],
                 affinity_uris=sorted(str(p) for p in (out / "artifacts" / "affinity").iterdir()),
                 manifest_uri=paths["manifest"])
    return report


def test_the_first_screen_holds_the_verdict_and_the_images_to_check(tmp_path: Path) -> None:
    """At 1400×900, without scrolling: the verdict in words (labels probably right, the truth
    against the folders, what to do next) and every image the page lists to check; the
    parameters come after them. A run whose labels are all sure says there is nothing to
    check, on the first screen too."""
    executable = _browser()
    source = _synthetic_source(tmp_path)
    out = tmp_path / "out"
    metrics = run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out),
                                          num_classes=2, backbone="mobilenet_v2", seed=0))
    sure = (out / "report.html").read_text()
    surest = min(pq.read_table(out / "labels.parquet")["confidence"].to_pylist())
    unsure = _unsure(out)
    browser = DevTools(executable, tmp_path / "profile")
    try:
        boxes = _first_screen(browser, unsure)
        shot = browser.call("Page.captureScreenshot", format="png")
        (tmp_path / "first-screen.png").write_bytes(base64.b64decode(shot["data"]))
        assert browser.errors() == []
    finally:
        browser.close()
    assert Image.open(tmp_path / "first-screen.png").size == (1400, 900)
    assert boxes["verdict"]["visible"] and boxes["verdict"]["bottom"] <= 900, boxes
    assert boxes["review"]["bottom"] <= 900, boxes
    assert len(boxes["listed"]) == 8, boxes
    assert all(b["visible"] and b["bottom"] <= 900 for b in boxes["listed"]), boxes
    assert boxes["summary"]["top"] > boxes["listed"][-1]["bottom"]  # parameters below them
    n = metrics["n_images"]
    assert f"About {n * 3 // 4} of {n} labels (75%) are probably right" in boxes["text"]
    assert f"Against the folder names: {round(metrics['accuracy'] * n)} of {n}" in boxes["text"]
    assert "Label next: the 8 images below" in boxes["text"], boxes["text"]
    assert ("Nothing to check:" in sure) == (surest >= 0.99) != ("Label next" in sure)
    keep = os.environ.get("GOGGLES_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "first-screen.png", Path(keep) / "first-screen.png")
