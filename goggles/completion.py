"""Complete artifacts that a rerun may trust.

A file artifact is complete once it exists: :func:`goggles.storage.write_bytes` commits it
atomically. A folder artifact (feature shards, an affinity shard) is many files, so it is complete
only when its ``_SUCCESS`` marker — written last, atomically, listing every file and its size —
is there and every listed file still is, with that size::

    begin_folder(uri)        # drop an old marker and killed writers' temporaries
    ...write the files...
    commit_folder(uri)       # the marker: from here on is_complete(uri) is True
"""

from __future__ import annotations

import logging
import time

from goggles import storage

logger = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"


def begin_folder(uri: str) -> None:
    """Mark folder ``uri`` incomplete before (re)writing it: drop its marker and leftovers of
    writers that were killed, so a crash from here on cannot leave an old marker vouching for
    a mix of old and new files."""
    storage.remove(storage.join(uri, SUCCESS_MARKER))
    storage.remove_temporaries(uri)


def commit_folder(uri: str) -> dict[str, int]:
    """Declare folder ``uri`` complete: write its ``_SUCCESS`` marker listing every file and its
    size. Returns that listing (relative name -> bytes)."""
    files = {name: size for name, size in storage.list_folder(uri).items()
             if name != SUCCESS_MARKER}
    storage.write_json({"files": files, "committed_at": time.time()},
                       storage.join(uri, SUCCESS_MARKER))
    return files


def is_complete(uri: str) -> bool:
    """Whether ``uri`` holds a complete artifact: a file that exists, or a folder whose marker
    exists and whose listed files are all there with their sizes."""
    marker = storage.join(uri, SUCCESS_MARKER)
    if not storage.exists(marker):
        return storage.is_file(uri)
    try:
        listed = storage.read_json(marker)["files"]
    except (storage.StorageError, ValueError, KeyError, TypeError):
        return False
    present = storage.list_folder(uri)
    missing = [name for name, size in listed.items() if present.get(name) != size]
    if missing:
        logger.warning("%s: its marker lists %d file(s) that are missing or changed (e.g. %s); "
                       "redo it", storage.redact(uri), len(missing), missing[0])
    return not missing
