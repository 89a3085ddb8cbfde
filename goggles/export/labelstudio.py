"""Label Studio pre-annotations: tasks whose ``predictions`` hold the labels, to review and
correct in Label Studio, and the labeling configuration they match.

The tasks follow Label Studio's documented import format ("Import pre-annotated data into Label
Studio"): a JSON list of tasks, each with a ``data`` object naming the image under the key the
configuration's ``<Image value="$image">`` reads, and a ``predictions`` list whose items carry a
``model_version``, a ``score`` (the data manager sorts by it, lowest first) and a ``result``
list of ``choices`` regions from the ``Choices`` control ``choice`` to the ``Image`` object
``image``. Every result has its own ``id``, as the import requires. ``data.goggles_uri`` keeps
the image's URI as the run lists it, so that the annotations exported from Label Studio come back
as dev labels matched exactly (:mod:`goggles.io.label_studio` reads them).

The configuration offers every class of the run as a choice and a text box, ``other``, for a class
no cluster has: a name typed there is the label (Label Studio's ``Choices`` take no free text).

How Label Studio reaches the images:

* local files: it serves them from ``/data/local-files/?d=<path>`` when started with
  ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
  (``document_root`` here, ``/`` by default, as in Label Studio), ``<path>`` being relative to
  that root, and once the project has a Local Files storage whose path holds the images;
* ``gs://`` and ``s3://`` images keep their URIs: Label Studio resolves them (pre-signed URLs
  or its proxy) for a project with a source cloud storage connected to that bucket.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from goggles.export.writers import Selected
from goggles.io import storage
from goggles.io.label_studio import CHOICE, IMAGE_KEY, LOCAL_FILES, OTHER, URI_KEY
from goggles.io.uris import is_local, local_path

TASKS = "tasks.json"
CONFIG = "labeling-config.xml"
FROM_NAME = CHOICE
TO_NAME = IMAGE_KEY


def image_url(uri: str, document_root: str = "/") -> str:
    """The ``data.image`` value of an image: a Label Studio local-files URL for a local file
    (``document_root`` is ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``), else the URI itself."""
    if not is_local(uri):
        return uri
    path, root = os.path.abspath(local_path(uri)), os.path.abspath(document_root)
    relative = os.path.relpath(path, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"image {path} lies outside the Label Studio document root {root}; "
                         "give --label-studio-root a folder that holds the images (the "
                         "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT Label Studio runs with)")
    return LOCAL_FILES + quote(relative.replace(os.sep, "/"), safe="/")


def tasks(rows: Selected, model_version: str,
          document_root: str = "/") -> list[dict[str, Any]]:
    """One task per image, its label as a prediction with the confidence as score."""
    return [{
        "data": {TO_NAME: image_url(rows.uri[i], document_root), URI_KEY: rows.uri[i],
                 "image_id": rows.image_id[i]},
        "predictions": [{
            "model_version": model_version,
            "score": rows.confidence[i],
            "result": [{"id": f"goggles-{rows.image_id[i]}", "from_name": FROM_NAME,
                        "to_name": TO_NAME, "type": "choices",
                        "value": {"choices": [rows.label[i]]}}],
        }],
    } for i in range(len(rows))]


def labeling_config(class_names: Sequence[str]) -> str:
    """The labeling configuration the tasks match: the image, one choice per class, and a text
    box for a class that is not among them (its text, when filled, is the label)."""
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in class_names)
    return (f"<View>\n  <Image name=\"{TO_NAME}\" value=\"${TO_NAME}\"/>\n"
            f"  <Choices name=\"{FROM_NAME}\" toName=\"{TO_NAME}\" choice=\"single\" "
            f"showInLine=\"true\">\n{choices}  </Choices>\n"
            "  <Header value=\"Another class? Type its name, then Enter (it replaces the "
            "choice):\"/>\n"
            f"  <TextArea name=\"{OTHER}\" toName=\"{TO_NAME}\" maxSubmissions=\"1\" "
            f"editable=\"true\" rows=\"1\" placeholder=\"a class not listed above\"/>\n"
            "</View>\n")


def write_label_studio(rows: Selected, dest: str, class_names: Sequence[str], *,
                       model_version: str, document_root: str = "/") -> list[str]:
    """``dest/tasks.json`` (import it into a project) and ``dest/labeling-config.xml`` (the
    project's labeling interface, every class a choice)."""
    listed = tasks(rows, model_version, document_root)  # one task a line: compact, yet diffable
    storage.write_text("[\n" + ",\n".join(json.dumps(task) for task in listed) + "\n]\n",
                       storage.join(dest, TASKS))
    storage.write_text(labeling_config(class_names), storage.join(dest, CONFIG))
    return [TASKS, CONFIG]
