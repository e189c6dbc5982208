"""Load test of `matcher serve` on loopback: N concurrent clients post bench scene photos (with their annotated
boxes) for T seconds, then a burst above capacity. Bounded in requests and seconds.

    MATCHER_DATA_DIR=DIR .venv/bin/python scripts/load_api.py ../shared/bench/furniture-dev --clients 1 2 4 8 --seconds 60

DIR must hold the data set's catalog, indexed. The script starts its own server (`matcher serve --port 0`, the
current MATCHER_* settings), warms it up, and reports per client count: throughput, p50/p95/p99 latency and status
counts; then checks that every 200 stored exactly one query and nothing else was stored, and that the server's
memory after the run is within 10 % of what it was after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from sqlalchemy import func, select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matcher.db.engine import get_engine  # noqa: E402
from matcher.db.models import Query  # noqa: E402
from matcher.settings import Settings  # noqa: E402
from tests.process_support import listening_port  # noqa: E402

MAX_REQUESTS = 2000  # per phase, whatever the seconds say


def scene_requests(dataset: Path, limit: int) -> list[tuple[bytes, list[str]]]:
    coco = json.loads((dataset / "scenes" / "instances.json").read_text())
    boxes: dict[int, list[str]] = {}
    for ann in coco["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(",".join(str(round(v)) for v in ann["bbox"]))
    return [((dataset / img["file_name"]).read_bytes(), boxes[img["id"]]) for img in coco["images"][:limit]
            if img["id"] in boxes]


def phase(base: str, requests: list, clients: int, seconds: float) -> dict:
    """``clients`` threads posting in a loop until ``seconds`` pass; latency and status of every request."""
    stop = time.monotonic() + seconds
    results: list[tuple[int, float, int | None]] = []
    lock = threading.Lock()
    counter = iter(range(MAX_REQUESTS))

    def client(index: int) -> None:
        with httpx.Client(timeout=300) as http:
            while time.monotonic() < stop:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                data, boxes = requests[(n + index) % len(requests)]
                start = time.perf_counter()
                try:
                    r = http.post(f"{base}/v1/match", files={"photo": ("room.jpg", data, "image/jpeg")},
                                  data={"box": boxes})
                    status, query_id = r.status_code, (r.json().get("query_id") if r.status_code == 200 else None)
                except httpx.HTTPError:
                    status, query_id = 0, None
                with lock:
                    results.append((status, time.perf_counter() - start, query_id))
                if status in (429, 503):  # as a well-behaved app does: wait as told (bounded by the phase)
                    wait = float(r.headers.get("Retry-After", "1"))
                    time.sleep(max(0.0, min(wait, stop - time.monotonic())))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ok = [latency for status, latency, _ in results if status == 200]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(results),
            "throughput_per_s": round(len(ok) / elapsed, 3),
            **{f"p{q}": round(float(np.percentile(ok, q)), 3) if ok else None for q in (50, 95, 99)},
            "status": dict(Counter(str(s) for s, _, _ in results)),
            "query_ids": [q for s, _, q in results if s == 200]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=24, help="Clients of the overload burst.")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="Photos posted before measuring.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = Settings()
    requests = scene_requests(args.dataset, args.scenes)
    # One client address posts everything: the per-client rate limit would measure itself, not the server.
    env = {"MATCHER_API_RATE_PER_MINUTE": "1000000", **os.environ}
    server = subprocess.Popen([sys.executable, "-m", "matcher.cli", "serve", "--port", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (port := listening_port(server)) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        engine = get_engine(settings)
        with Session(engine) as session:
            queries_before = session.scalar(select(func.count()).select_from(Query))
        # Warm-up: the models load and the per-product caches fill on a pass over the photos (queries stored).
        for data, boxes in requests[: args.warmup]:
            warm = httpx.post(f"{base}/v1/match", files={"photo": ("room.jpg", data, "image/jpeg")},
                              data={"box": boxes}, timeout=600)
            if warm.status_code != 200:
                raise SystemExit(f"warm-up failed: {warm.status_code} {warm.text[:300]}")
        memory_warm = psutil.Process(server.pid).memory_info().rss
        rows = [phase(base, requests, n, args.seconds) for n in args.clients]
        rows.append({**phase(base, requests, args.burst, min(args.seconds, 30.0)), "burst": True})
        memory_after = psutil.Process(server.pid).memory_info().rss
        with Session(engine) as session:
            stored = session.scalar(select(func.count()).select_from(Query)) - queries_before
    finally:
        server.terminate()
        server.wait(timeout=60)
    ids = [q for row in rows for q in row["query_ids"]]
    checks = {
        "ok_responses": len(ids), "stored_queries_after_warmup": stored - args.warmup,
        "duplicated_query_ids": len(ids) - len(set(ids)),
        "lost_or_extra_queries": (stored - args.warmup) - len(ids),
        "server_errors_other_than_503": sum(v for row in rows for s, v in row["status"].items()
                                            if s.startswith("5") and s != "503" or s == "0"),
        "memory_warm_mb": round(memory_warm / 1e6), "memory_after_mb": round(memory_after / 1e6),
        "memory_growth": round(memory_after / memory_warm - 1, 4),
    }
    print("| clients | seconds | requests | 200/s | p50 s | p95 s | p99 s | statuses |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        label = f"{row['clients']} (burst)" if row.get("burst") else str(row["clients"])
        print(f"| {label} | {row['seconds']} | {row['requests']} | {row['throughput_per_s']} | {row['p50']} | "
              f"{row['p95']} | {row['p99']} | {row['status']} |")
    print("\n" + json.dumps(checks, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"rows": [{k: v for k, v in r.items() if k != "query_ids"} for r in rows],
                                         "checks": checks}, indent=2) + "\n")
    healthy = (checks["lost_or_extra_queries"] == 0 and checks["duplicated_query_ids"] == 0
               and checks["server_errors_other_than_503"] == 0 and abs(checks["memory_growth"]) <= 0.10)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
