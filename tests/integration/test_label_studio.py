"""The Label Studio round trip through the real Label Studio on loopback: ``goggles export
--format label-studio --only FILE`` writes the tasks of the images to label, Label Studio takes
goggles' labeling config and those tasks and serves their images, a person's annotations go in
through its API (a choice, a class typed in the text box, a skip, a label changed), and its own
JSON and JSON-MIN exports, given to ``--dev-labels``, give the same labels as the CSV of them.

Label Studio (``pip install 'label-studio==1.23.*'``, in a virtual environment of its own: its
pins clash with goggles') is found through ``GOGGLES_LABEL_STUDIO`` (its ``label-studio``
script) or at :data:`DEFAULT`, where ``.ci/run`` installs it; without it the test skips, saying
so. A fresh database takes Label Studio 1–2 minutes of migrations, so one migrated database is kept
beside it (``goggles-db-template``, which ``.ci/run`` prepares) and copied for each run: the test
then takes well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goggles.cli import main
from goggles.io.artifacts import output_paths
from goggles.io.dev_labels import read_dev_labels, read_dev_labels_table
from goggles.io.storage import read_parquet
from tests.integration.servers import LOOPBACK, free_port, wait_until
from tests.unit.test_export import CLASSES, make_run

pytestmark = pytest.mark.integration

DEFAULT = Path.home() / ".cache" / "goggles" / "label-studio-1.23" / "bin" / "label-studio"
TEMPLATE = "goggles-db-template"
TOKEN = "goggles-test-token-0123456789"
QUIET = {"LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "",
         "FRONTEND_SENTRY_DSN": ""}
"""No version check, analytics or crash reports: nothing leaves the machine."""


def label_studio() -> Path:
    """The ``label-studio`` script, or a skip naming how to install it. While CI installs it
    beside the tests, ``GOGGLES_LABEL_STUDIO_READY`` names the file that says it is done: wait
    for it (at most 15 minutes)."""
    ready = os.environ.get("GOGGLES_LABEL_STUDIO_READY")
    deadline = time.monotonic() + 900
    while ready and not Path(ready).exists() and time.monotonic() < deadline:
        time.sleep(5)
    binary = Path(os.environ.get("GOGGLES_LABEL_STUDIO") or DEFAULT)
    if not os.access(binary, os.X_OK):
        pytest.skip(f"Label Studio not installed at {binary}: python3 -m venv VENV && "
                    "VENV/bin/pip install 'label-studio==1.23.*', then set "
                    "GOGGLES_LABEL_STUDIO=VENV/bin/label-studio (.ci/run does)")
    return binary


def migrated_database(binary: Path, scratch: Path) -> Path:
    """A data folder whose database Label Studio has migrated: kept beside its install
    (made once, 1–2 minutes), else in ``scratch``."""
    home = binary.resolve().parent.parent
    template = home / TEMPLATE
    if (template / "label_studio.sqlite3").is_file():
        return template
    target = template if os.access(home, os.W_OK) else scratch / TEMPLATE
    building = target.with_name(f"{target.name}.{os.getpid()}")
    subprocess.run([str(binary), "version", "--data-dir", str(building)], check=True,
                   env={**os.environ, **QUIET}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    try:
        building.rename(target)
    except OSError:  # made meanwhile by another run
        shutil.rmtree(building, ignore_errors=True)
    return target


class LabelStudio:
    """Label Studio started on 127.0.0.1 with its own data folder, serving local files under
    ``document_root``; :meth:`call` is its REST API with the user's token."""

    def __init__(self, binary: Path, data: Path, document_root: Path):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        env = {**os.environ, **QUIET, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
               "LABEL_STUDIO_HOST": self.url}
        self.log = (data.parent / "label-studio.log").open("wb")
        self.process = subprocess.Popen(
            [str(binary), "start", "--internal-host", LOOPBACK, "--port", str(self.port),
             "--no-browser", "--data-dir", str(data), "--username", "person@example.com",
             "--password", "goggles-test-password", "--user-token", TOKEN,
             "--enable-legacy-api-token"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: True if self._health() else None, self.process,
                   "Label Studio", timeout=120)

    def _health(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        request = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                content = answer.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: {error.code} {error.read()[:500]!r}") from None
        return content if raw else json.loads(content)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[LabelStudio]:
    binary = label_studio()
    data = tmp_path / "label-studio-data"
    shutil.copytree(migrated_database(binary, tmp_path), data)
    server = LabelStudio(binary, data, document_root=tmp_path)
    try:
        yield server
    finally:
        server.stop()


def region(control: str, value: dict[str, list[str]]) -> dict[str, Any]:
    kind = "choices" if "choices" in value else "textarea"
    return {"id": f"{control}-1", "from_name": control, "to_name": "image", "type": kind,
            "value": value, "origin": "manual"}


def test_label_studio_export_gives_the_labels_of_the_csv(studio: LabelStudio,
                                                         tmp_path: Path) -> None:
    out, source = make_run(tmp_path)
    run_uris = read_parquet(output_paths(out)["labels"])["uri"].to_pylist()
    asked = sorted(run_uris)[::3]  # the images a suggestion asks for
    suggestion = tmp_path / "suggested.csv"
    suggestion.write_text("uri,label\n" + "".join(f"{uri},\n" for uri in asked))
    dest = tmp_path / "to-label"
    assert main(["export", out, "--format", "label-studio", "--output", str(dest),
                 "--only", str(suggestion), "--label-studio-root", str(tmp_path)]) == 0

    project = studio.call("POST", "/api/projects", {
        "title": "goggles round trip", "label_config": (dest / "labeling-config.xml").read_text()})
    studio.call("POST", "/api/storages/localfiles", {
        "project": project["id"], "title": "images", "path": source, "use_blob_urls": False})
    imported = studio.call("POST", f"/api/projects/{project['id']}/import",
                           json.loads((dest / "tasks.json").read_text()))
    assert imported["task_count"] == len(asked) and imported["prediction_count"] == len(asked)
    tasks = studio.call("GET", f"/api/tasks?project={project['id']}&page_size=1000")["tasks"]
    by_uri = {task["data"]["goggles_uri"]: task for task in tasks}
    assert sorted(by_uri) == asked
    first = by_uri[asked[0]]["data"]["image"]  # Label Studio serves the image the URL names
    assert studio.call("GET", first, raw=True) == Path(asked[0]).read_bytes()

    # the person: the true class (the source folder) of most; a class of their own typed for
    # one; one skipped; one labeled, then changed
    truth = {uri: Path(uri).parent.parent.name for uri in asked}
    typed, skipped, changed = asked[1], asked[2], asked[3]
    expected = {uri: name for uri, name in truth.items() if uri != skipped}
    expected[typed] = "delta"
    for uri, name in truth.items():
        number = by_uri[uri]["id"]
        if uri == skipped:
            studio.call("POST", f"/api/tasks/{number}/annotations?was_cancelled=1",
                        {"result": [], "was_cancelled": True})
            continue
        result = [region("choice", {"choices": [CLASSES[0] if uri == changed else name]})]
        if uri == typed:
            result.append(region("other", {"text": ["delta"]}))
        made = studio.call("POST", f"/api/tasks/{number}/annotations", {"result": result})
        if uri == changed:
            time.sleep(0.01)
            studio.call("PATCH", f"/api/annotations/{made['id']}",
                        {"result": [region("choice", {"choices": [name]})]})
    assert truth[changed] != CLASSES[0]  # so that the change shows

    csv_path = tmp_path / "dev.csv"
    csv_path.write_text("uri,label\n" + "".join(f"{u},{n}\n" for u, n in expected.items()))
    rows = read_parquet(output_paths(out)["labels"]).select(["uri"])
    want_rows, want_names = read_dev_labels(str(csv_path), rows)
    want = sorted(zip(want_rows.tolist(), want_names, strict=True))
    for export_type in ("JSON", "JSON_MIN"):
        export = tmp_path / f"project-{project['id']}-{export_type}.json"
        export.write_bytes(studio.call(
            "GET", f"/api/projects/{project['id']}/export?exportType={export_type}", raw=True))
        table = read_dev_labels_table(str(export))
        assert dict(zip(table["uri"].to_pylist(), table["label"].to_pylist(),
                        strict=True)) == expected, export_type
        got_rows, got_names = read_dev_labels(str(export), rows)
        assert sorted(zip(got_rows.tolist(), got_names, strict=True)) == want, export_type
