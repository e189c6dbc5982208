"""The shoppers' HTTP API on the embedded Postgres with a small indexed sample catalog: FastAPI's TestClient
for the shapes and the refusals, and one real `matcher serve` process on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from matcher.api.app import create_app
from matcher.db.engine import get_engine
from matcher.db.models import Query
from tests.process_support import listening_port
from tests.review_support import SCENE, clone_settings, env_for, sample_template, scene_annotations

BOXES = [",".join(str(v) for v in a["bbox"]) for a in scene_annotations()]


@pytest.fixture(scope="module")
def template(pg_server, tmp_path_factory):
    return sample_template(pg_server, tmp_path_factory)


def _settings(pg_server, template, tmp_path, **overrides):
    return clone_settings(pg_server, template[0], tmp_path / "data", **overrides)


def _client(settings) -> TestClient:
    return TestClient(create_app(settings))


def _post(client: TestClient, data: bytes = b"", name: str = "room.jpg", boxes=BOXES, headers=None, **fields):
    return client.post("/v1/match", files={"photo": (name, data or SCENE.read_bytes(), "image/jpeg")},
                       data={"box": list(boxes), **fields}, headers=headers or {})


def _queries(settings) -> int:
    with Session(get_engine(settings)) as session:
        return session.scalar(select(func.count()).select_from(Query))


def test_a_match_returns_products_per_object_and_stores_one_query(pg_server, template, tmp_path):
    settings = _settings(pg_server, template, tmp_path)
    client = _client(settings)
    response = _post(client, top_k="3", mask="rle")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"query_id", "space", "reranker", "image", "timings_s", "objects"}
    assert body["image"] == {"width": 800, "height": 600} and len(body["objects"]) == 2
    truth = {a["sku"] for a in scene_annotations()}
    for obj in body["objects"]:
        assert len(obj["products"]) == 3 and obj["mask_status"] == "ok"
        first = obj["products"][0]
        assert {"sku", "title", "category", "score", "features", "explanation"} <= set(first)
        assert "cosine" in first["features"] and first["explanation"]
        assert obj["mask"]["size"] == [600, 800] and isinstance(obj["mask"]["counts"], str)
    assert truth & {p["sku"] for obj in body["objects"] for p in obj["products"]}
    assert _queries(settings) == 1

    stored = client.get(f"/v1/queries/{body['query_id']}").json()
    assert [o["detection_id"] for o in stored["objects"]] == [o["detection_id"] for o in body["objects"]]
    sku = body["objects"][0]["products"][0]["sku"]  # skus hold a '/'
    assert client.get(f"/v1/products/{sku}").json()["sku"] == sku
    assert client.get("/v1/products/no/such-sku").status_code == 404
    assert client.get("/v1/queries/999999").status_code == 404
    assert "/v1/match" in client.get("/openapi.json").json()["paths"]
    metrics = client.get("/metrics").text
    assert 'matcher_http_requests_total{route="/v1/match",status="200"} 1.0' in metrics
    assert "matcher_stage_seconds_bucket" in metrics and "matcher_queue_depth 0.0" in metrics


def test_without_boxes_the_learned_segmenter_finds_the_objects(pg_server, template, tmp_path):
    settings = _settings(pg_server, template, tmp_path)
    client = _client(settings)
    everything = _post(client, boxes=[])
    assert everything.status_code == 200, everything.text
    found = everything.json()["objects"]
    assert found and all(o["source"] == f"prompt:{o['label']}" for o in found)
    assert all(o["products"] for o in found if o["mask_status"] == "ok")
    lantern = next(a for a in scene_annotations() if "Lantern" in a["sku"])
    boxes = [o["box"] for o in found]
    assert max(_box_iou(b, lantern["bbox"]) for b in boxes) > 0.4  # the lantern is found once, under one label
    assert all(_box_iou(a, b) < 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    lamps = _post(client, boxes=[], prompt="the lanterns")
    assert lamps.status_code == 200 and {o["label"] for o in lamps.json()["objects"]} <= {"lamp"}
    unknown = _post(client, boxes=[], prompt="the spaceship")
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_prompt"
    assert _queries(settings) == 2


def _box_iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0, min(ax1, bx1) - max(a[0], b[0])) * max(0, min(ay1, by1) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_bad_requests_get_clear_errors_and_store_nothing(pg_server, template, tmp_path):
    settings = _settings(pg_server, template, tmp_path, max_upload_bytes=300_000, seg_model_dir=tmp_path / "no-model")
    client = _client(settings)
    cases = [
        (_post(client, b"#!/bin/sh\necho hi\n", name="notes.jpg"), 415, "not_image"),
        (_post(client, SCENE.read_bytes()[:3000]), 422, "undecodable"),
        (_post(client, boxes=["1,2,three,4"]), 422, "bad_request"),
        (_post(client, boxes=[]), 422, "boxes_needed"),
        (_post(client, boxes=["5000,5000,10,10"]), 422, "bad_request"),
    ]
    big = io.BytesIO()
    Image.effect_noise((900, 900), 60).convert("RGB").save(big, format="PNG")
    assert big.tell() > 400_000
    cases.append((_post(client, big.getvalue(), name="big.png"), 413, "too_large"))
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
    assert _queries(settings) == 0
    uploads = settings.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())  # refused photos are not kept


def test_keys_and_rate_limits(pg_server, template, tmp_path):
    settings = _settings(pg_server, template, tmp_path, api_keys=["k-one-secret", "k-two-secret"], api_rate_per_minute=2)
    client = _client(settings)
    assert _post(client).status_code == 401
    assert _post(client, headers={"X-API-Key": "guess"}).status_code == 401
    one = {"X-API-Key": "k-one-secret"}
    assert _post(client, headers=one, boxes=["nope"]).status_code == 422  # counted, refused for its content
    assert _post(client, headers=one, boxes=BOXES[:1]).status_code == 200
    limited = _post(client, headers=one, boxes=BOXES[:1])
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert _post(client, headers={"X-API-Key": "k-two-secret"}, boxes=BOXES[:1]).status_code == 200  # another key
    assert client.get("/livez").status_code == 200  # health needs no key


def test_a_full_queue_answers_503_at_once_and_livez_stays_up(pg_server, template, tmp_path):
    settings = _settings(pg_server, template, tmp_path, api_threads=1, api_max_queue=0)
    app = create_app(settings)
    runner = app.app.state.runner
    client = TestClient(app)
    release = threading.Event()
    runner._slots.acquire()  # the only model thread is busy with someone else's slow photo
    runner.executor.submit(release.wait)
    try:
        start = time.monotonic()
        busy = _post(client)
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
        assert client.get("/livez").status_code == 200
        assert time.monotonic() - start < 10  # refused, not queued
    finally:
        release.set()
        runner._slots.release()
    assert _post(client).status_code == 200
    assert _queries(settings) == 1


def test_readiness_follows_the_index(db_settings):
    client = _client(db_settings)
    before = client.get("/readyz")
    assert before.status_code == 503 and before.json()["database"] and not before.json()["index"]
    from matcher.indexing import run_index
    from tests.review_support import SAMPLE

    catalog = db_settings.data_dir.parent / "catalog.jsonl"
    rows = [json.loads(line) for line in (SAMPLE / "catalog" / "products.jsonl").read_text().splitlines()[:3]]
    catalog.write_text("".join(json.dumps({**row, "image": str(SAMPLE / row["image"])}) + "\n" for row in rows))
    run_index(catalog, db_settings, progress=False)
    deadline = time.monotonic() + 300
    while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)  # the models load on a model thread after the index appears
    assert ready.status_code == 200 and ready.json()["models"] and ready.json()["index"]


def test_a_real_server_process_answers_on_loopback(pg_server, template, tmp_path):
    settings = _settings(pg_server, template, tmp_path)
    env = {**os.environ, **env_for(settings)}
    process = subprocess.Popen([sys.executable, "-m", "matcher.cli", "serve", "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while (port := listening_port(process)) is None:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/livez").json() == {"status": "ok"}
        response = httpx.post(f"{base}/v1/match", files={"photo": ("room.jpg", SCENE.read_bytes(), "image/jpeg")},
                              data={"box": BOXES}, timeout=300)
        assert response.status_code == 200, response.text
        assert len(response.json()["objects"]) == 2 and _queries(settings) == 1
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_request_past_its_time_limit_gets_504_and_its_slot_comes_back(pg_server, template, tmp_path):
    settings = _settings(pg_server, template, tmp_path, api_timeout_s=0.05, api_max_queue=0)
    app = create_app(settings)
    runner = app.app.state.runner
    client = TestClient(app)
    late = _post(client)  # loading the models alone takes far longer than 50 ms
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
    deadline = time.monotonic() + 300
    while runner.in_flight and time.monotonic() < deadline:
        time.sleep(0.2)  # the work itself finishes on its thread, holding its slot until then
    assert runner.in_flight == 0 and runner._slots.acquire(blocking=False)
    runner._slots.release()
