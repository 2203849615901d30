"""``/v1/batches``: the Batch API (docs/batches.md); the runs are api/batches/runner.py's."""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Blueprint, jsonify, request

from api.batches.store import BatchRecord, new_batch
from api.openai_objects import list_object
from api.routes.common import int_arg, json_body, owner_of_request
from api.routes.files import stored_file
from api.schemas.base import parse_body
from api.schemas.batches import BatchRequest
from api.services import services
from shared.errors import InvalidRequest, NotFound

bp = Blueprint("batches", __name__, url_prefix="/v1")

_ID = re.compile(r"^batch_[0-9a-f]{32}$")


@bp.post("/batches")
def create_batch():
    req: BatchRequest = parse_body(BatchRequest, json_body())
    input_file = stored_file(req.input_file_id, param="input_file_id")
    if input_file.object["purpose"] != "batch":
        raise InvalidRequest("the input file must be uploaded with purpose 'batch'", param="input_file_id")
    batch = new_batch(req.endpoint, req.input_file_id, req.completion_window, req.metadata)
    svc = services()
    record = svc.batches.create(batch, owner_of_request())
    if svc.batch_runner is not None:
        svc.batch_runner.wake()
    return jsonify(record.batch)


def _load(batch_id: str) -> BatchRecord:
    """The caller's batch; another key's is as unknown as one that never was (404)."""
    record = services().batches.load(batch_id, owner_of_request()) if _ID.match(batch_id) else None
    if record is None:
        raise NotFound(f"no batch {batch_id!r}", param="batch_id")
    return record


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(_load(batch_id).batch)


@bp.get("/batches")
def list_batches():
    limit = int_arg("limit", 20, 1, 100)
    data, more = services().batches.page(owner_of_request(), request.args.get("after"), limit)
    return jsonify(list_object(data, more))


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    record = _load(batch_id)

    def change(batch: dict[str, Any]) -> None:
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))

    record = services().batches.update(record.id, change)
    if record.status not in ("cancelling", "cancelled"):
        raise InvalidRequest(
            f"batch {record.id!r} is {record.status}; only a validating or in-progress batch can be "
            "cancelled",
            param="batch_id",
        )
    return jsonify(record.batch)
