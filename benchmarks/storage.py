"""Object-storage throughput against a real GCS-protocol server on loopback (fake-gcs-server):

* listing 20,000 objects with :func:`goggles.listing.list_files` (objects/s, and the number of
  HTTP requests it took, counted by a pass-through proxy: paginated, not one per object);
* reading 1,000 real cub-dev JPEGs with :func:`goggles.io.transfer.read_many` at several
  concurrency limits (images/s, MB/s, speed-up over one request at a time);
* writing them back with :func:`goggles.io.storage.write_bytes` (atomic: upload to a temporary,
  server-side copy, delete), 16 at a time.

    python benchmarks/storage.py [--objects 20000] [--images 1000] [--repeats 3]

The numbers measure this client stack (gcsfs/aiohttp + goggles) against a local server, so they
are an upper bound on per-request overhead, not a measurement of Google Cloud Storage.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cub import CUB  # noqa: E402
from goggles.io import listing, storage, transfer  # noqa: E402
from goggles.io.concurrency import map_bounded  # noqa: E402
from tests.integration.servers import FaultyProxy, GCSServer  # noqa: E402

BUCKET = "bench"


def real_images(count: int) -> dict[str, bytes]:
    """``count`` cub-dev JPEGs, spread evenly over the species (``species/file.jpg`` -> bytes);
    synthetic JPEGs of similar size when cub-dev is absent."""
    if CUB.is_dir():
        folders = sorted(p for p in CUB.iterdir() if p.is_dir())
        files = [sorted(f.iterdir()) for f in folders]
        picked: dict[str, bytes] = {}
        row = 0
        while len(picked) < count and any(row < len(f) for f in files):
            for folder, images in zip(folders, files, strict=True):
                if row < len(images) and len(picked) < count:
                    picked[f"{folder.name}/{images[row].name}"] = images[row].read_bytes()
            row += 1
        return picked
    print(f"cub-dev not found at {CUB}; using synthetic 500x375 JPEGs")
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for i in range(count):
        pixels = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=75)
        out[f"synthetic/{i:05d}.jpg"] = buffer.getvalue()
    return out


def timed(repeats: int, work):  # type: ignore[no-untyped-def]
    """Median wall time of ``repeats`` calls of ``work`` and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def raw_listing(url: str, prefix: str) -> int:
    """List ``prefix`` page by page with plain HTTP GETs (the server's share of a listing)."""
    count, token = 0, ""
    while True:
        query = f"prefix={prefix}&maxResults=1000" + (f"&pageToken={token}" if token else "")
        with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}") as reply:
            page = json.load(reply)
        count += len(page.get("items", []))
        token = page.get("nextPageToken", "")
        if not token:
            return count


def use_endpoint(server: GCSServer, endpoint: str) -> None:
    """Point gcsfs at ``endpoint`` (the environment, as in production) with a fresh client."""
    os.environ.update(server.environment(endpoint))
    storage.filesystem("gs://x")[0].clear_instance_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    images = real_images(args.images)
    megabytes = sum(len(b) for b in images.values()) / 1e6
    seed = {f"many/{i // 1000:02d}/{i:05d}.jpg": b"x" * 64 for i in range(args.objects)}
    seed.update({f"images/{name}": data for name, data in images.items()})
    print(f"seeding fake-gcs-server: {args.objects} small objects + {len(images)} images "
          f"({megabytes:.1f} MB)")
    with GCSServer(seed={BUCKET: seed}) as server:
        use_endpoint(server, server.url)

        # listing: timed directly, and once through a pass-through proxy that counts requests
        seconds, listed = timed(args.repeats, lambda: listing.list_files(
            f"gs://{BUCKET}/many", (".jpg",)))
        assert len(listed) == args.objects, f"listed {len(listed)} of {args.objects}"
        with FaultyProxy(server.url, fail_rate=0.0) as proxy:
            use_endpoint(server, proxy.url)
            listing.list_files(f"gs://{BUCKET}/many", (".jpg",))
            requests = proxy.counts["requests"]
        use_endpoint(server, server.url)
        raw_seconds, raw_count = timed(args.repeats, lambda: raw_listing(server.url, "many/"))
        assert raw_count == args.objects
        print(f"\nlist {len(listed)} objects: {seconds:.2f} s (median of {args.repeats}) -> "
              f"{len(listed) / seconds:,.0f} objects/s, in {requests} HTTP requests "
              f"({len(listed) / requests:,.0f} objects per request)")
        print(f"the same pages fetched raw with urllib: {raw_seconds:.2f} s -> the server "
              f"takes {raw_seconds / seconds:.0%} of the listing time")

        # reads: on loopback, then with a 20 ms round trip per request (as to a cloud region)
        uris = [f"gs://{BUCKET}/images/{name}" for name in sorted(images)]
        expected = [len(images[name]) for name in sorted(images)]
        for latency_ms, repeats in ((0, args.repeats), (20, 1)):
            slow = FaultyProxy(server.url, fail_rate=0.0, latency_s=latency_ms / 1000).start() \
                if latency_ms else None
            use_endpoint(server, slow.url if slow else server.url)
            print(f"\nread {len(uris)} images ({megabytes:.1f} MB) with transfer.read_many, "
                  f"{latency_ms} ms added per request:")
            print(f"{'concurrency':>11} {'seconds':>8} {'images/s':>9} {'MB/s':>7} "
                  f"{'speed-up':>8}")
            baseline = None
            for limit in (1, 4, 16, 32):
                seconds, got = timed(repeats, lambda limit=limit: [
                    data for _, data in transfer.read_many(uris, max_concurrency=limit)])
                assert [len(d) if isinstance(d, bytes) else d for d in got] == expected
                baseline = baseline or seconds
                print(f"{limit:>11} {seconds:>8.2f} {len(uris) / seconds:>9.0f} "
                      f"{megabytes / seconds:>7.1f} {baseline / seconds:>7.1f}x")
            if slow:
                slow.stop()
        use_endpoint(server, server.url)

        # atomic writes
        targets = [(f"gs://{BUCKET}/copy/{name}", data) for name, data in sorted(images.items())]
        start = time.perf_counter()
        for _ in map_bounded(lambda t: storage.write_bytes(*t), targets, max_concurrency=16):
            pass
        seconds = time.perf_counter() - start
        print(f"\nwrite {len(targets)} images atomically (upload, copy, delete), 16 at a time: "
              f"{seconds:.2f} s -> {len(targets) / seconds:.0f} objects/s, "
              f"{megabytes / seconds:.1f} MB/s")


if __name__ == "__main__":
    main()
