"""The Batch API's files and batch objects against a real Redis with no live worker: uploads and their
limits, listing, reading and deleting files, batches created, listed, cancelled, and kept apart per
API key. (Lines that run: tests/e2e/test_batches.py.)"""

from __future__ import annotations

import io
import json

import pytest

from harness import wait_until

GOOD = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/embeddings",
    "body": {"model": "minilm", "input": "x"},
}


def jsonl(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client, data: bytes, purpose: str = "batch", headers=None, name: str = "in.jsonl"):
    form = {"file": (io.BytesIO(data), name), "purpose": purpose}
    return client.post("/v1/files", data=form, content_type="multipart/form-data", headers=headers or {})


@pytest.fixture
def app(make_app, redis_db, tmp_path):
    return make_app(
        redis_db.url, request_timeout=30, files_dir=tmp_path / "files", file_max_bytes=4096, batch_max_lines=5
    )


@pytest.fixture
def client(app):
    return app.test_client()


def test_a_file_is_uploaded_listed_read_and_deleted(client) -> None:
    data = jsonl(GOOD, {**GOOD, "custom_id": "b"})
    made = upload(client, data, name="mine.jsonl")
    assert made.status_code == 200, made.json
    obj = made.json
    assert obj["object"] == "file" and obj["id"].startswith("file-") and obj["bytes"] == len(data)
    assert obj["filename"] == "mine.jsonl" and obj["purpose"] == "batch" and obj["status"] == "processed"
    assert client.get(f"/v1/files/{obj['id']}").json == obj
    assert client.get(f"/v1/files/{obj['id']}/content").data == data
    second = upload(client, data).json
    listed = client.get("/v1/files").json
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]][:2] == [second["id"], obj["id"]]
    assert [f["id"] for f in client.get("/v1/files?limit=1").json["data"]] == [second["id"]]
    assert client.get("/v1/files?purpose=batch_output").json["data"] == []
    gone = client.delete(f"/v1/files/{obj['id']}")
    assert gone.json == {"id": obj["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{obj['id']}").status_code == 404
    assert client.get(f"/v1/files/{obj['id']}/content").status_code == 404


@pytest.mark.parametrize(
    "form, param",
    [
        ({"purpose": "batch"}, "file"),
        ({"file": (io.BytesIO(b"{}\n"), "x.jsonl"), "purpose": "fine-tune"}, "purpose"),
    ],
)
def test_an_upload_without_a_file_or_a_known_purpose_is_a_400(client, form, param) -> None:
    answer = client.post("/v1/files", data=form, content_type="multipart/form-data")
    assert answer.status_code == 400 and answer.json["error"]["param"] == param


def test_an_upload_past_the_limits_is_a_413_or_a_400_and_nothing_is_kept(client) -> None:
    too_big = upload(client, b"x" * 5000)
    assert too_big.status_code == 413 and too_big.json["error"]["code"] == "request_too_large"
    too_long = upload(client, jsonl(*[{**GOOD, "custom_id": str(i)} for i in range(6)]))
    assert too_long.status_code == 400 and too_long.json["error"]["code"] == "too_many_requests"
    assert client.get("/v1/files").json["data"] == []


@pytest.mark.parametrize("file_id", ["file-nope", "../../etc/passwd", "file-..%2F..%2Fx"])
def test_an_unknown_or_crafted_file_id_is_a_404(client, file_id) -> None:
    assert client.get(f"/v1/files/{file_id}").status_code == 404


def create(client, body: dict, headers=None):
    return client.post("/v1/batches", json=body, headers=headers or {})


def test_a_batch_is_created_listed_and_cancelled_while_it_waits_for_a_worker(client) -> None:
    file_id = upload(client, jsonl(GOOD)).json["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    made = create(client, {**body, "metadata": {"job": "nightly"}})
    assert made.status_code == 200, made.json
    batch = made.json
    assert (
        batch["object"] == "batch"
        and batch["status"] == "validating"
        and batch["metadata"] == {"job": "nightly"}
    )
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    # No live worker: the line is refused (503) and sent again until one comes; the batch runs on.
    wait_until(
        lambda: client.get(f"/v1/batches/{batch['id']}").json["status"] == "in_progress", 20, "running"
    )
    assert client.get(f"/v1/batches/{batch['id']}").json["request_counts"]["total"] == 1
    other = create(client, body).json
    assert [b["id"] for b in client.get("/v1/batches").json["data"]][:2] == [other["id"], batch["id"]]
    page = client.get("/v1/batches?limit=1").json
    assert [b["id"] for b in page["data"]] == [other["id"]] and page["has_more"]
    after = client.get(f"/v1/batches?limit=1&after={other['id']}").json
    assert [b["id"] for b in after["data"]] == [batch["id"]]
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json["status"] in ("cancelling", "cancelled")

    def status() -> str:
        return client.get(f"/v1/batches/{batch['id']}").json["status"]

    wait_until(lambda: status() == "cancelled", 20, "the cancel")
    done = client.get(f"/v1/batches/{batch['id']}").json
    assert (
        done["cancelled_at"] and done["output_file_id"] is None and done["request_counts"]["completed"] == 0
    )
    again = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 200 and again.json["status"] == "cancelled"
    client.post(f"/v1/batches/{other['id']}/cancel")


@pytest.mark.parametrize(
    "change, param",
    [
        ({"endpoint": "/v1/models"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
def test_a_bad_batch_body_is_a_400_naming_its_field(client, change, param) -> None:
    file_id = upload(client, jsonl(GOOD)).json["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h", **change}
    answer = create(client, body)
    assert answer.status_code == 400 and answer.json["error"]["param"] == param


def test_a_batch_of_an_unknown_file_is_a_404_and_of_an_unknown_batch_too(client) -> None:
    answer = create(
        client, {"input_file_id": "file-0", "endpoint": "/v1/embeddings", "completion_window": "24h"}
    )
    assert answer.status_code == 404 and answer.json["error"]["param"] == "input_file_id"
    assert client.get("/v1/batches/batch_" + "0" * 32).status_code == 404
    assert client.post("/v1/batches/nope/cancel").status_code == 404


def test_files_and_batches_are_seen_only_by_the_key_that_made_them(make_app, redis_db, tmp_path) -> None:
    app = make_app(redis_db.url, api_keys=("key-a", "key-b"), files_dir=tmp_path / "keyed")
    client = app.test_client()
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    file_id = upload(client, jsonl(GOOD), headers=a).json["id"]
    assert client.get(f"/v1/files/{file_id}", headers=b).status_code == 404
    assert client.get("/v1/files", headers=b).json["data"] == []
    assert client.delete(f"/v1/files/{file_id}", headers=b).status_code == 404
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    assert create(client, body, headers=b).status_code == 404
    batch = create(client, body, headers=a).json
    assert client.get(f"/v1/batches/{batch['id']}", headers=b).status_code == 404
    assert client.post(f"/v1/batches/{batch['id']}/cancel", headers=b).status_code == 404
    assert [x["id"] for x in client.get("/v1/batches", headers=a).json["data"]] == [batch["id"]]
    assert client.get("/v1/batches", headers=b).json["data"] == []
    client.post(f"/v1/batches/{batch['id']}/cancel", headers=a)


def test_a_batch_past_its_window_expires_with_an_error_line_for_each_line_not_run(app, client) -> None:
    lines = [{**GOOD, "custom_id": f"c{i}"} for i in range(3)]
    file_id = upload(client, jsonl(*lines)).json["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    batch = create(client, body).json

    def status() -> str:
        return client.get(f"/v1/batches/{batch['id']}").json["status"]

    wait_until(lambda: status() == "in_progress", 20, "running")  # its lines wait for a worker
    # The 24 hours pass (written as the window's end, not waited for).
    app.extensions["modelyard"].batches.update(batch["id"], lambda b: b.update(expires_at=b["created_at"]))
    wait_until(lambda: status() == "expired", 20, "the expiry")
    done = client.get(f"/v1/batches/{batch['id']}").json
    assert done["expired_at"] and done["output_file_id"] is None
    assert done["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    errors = [
        json.loads(x) for x in client.get(f"/v1/files/{done['error_file_id']}/content").data.splitlines()
    ]
    assert sorted(e["custom_id"] for e in errors) == ["c0", "c1", "c2"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
