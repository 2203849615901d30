"""``/v1/files``: the Batch API's input and output files (api/batches/files.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, send_file

from api.batches import lines
from api.batches.files import UPLOAD_PURPOSES, StoredFile
from api.openai_objects import page
from api.routes.common import int_arg, order_arg, owner_of_request
from api.services import services
from shared.errors import InvalidRequest, NotFound

bp = Blueprint("files", __name__, url_prefix="/v1")


@bp.post("/files")
def upload_file():
    svc = services()
    upload = request.files.get("file")
    if upload is None:
        raise InvalidRequest(
            "a multipart form field 'file' with the file's content is required", param="file"
        )
    purpose = request.form.get("purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}", param="purpose")
    stored = svc.files.save(upload.stream, upload.filename or "upload.jsonl", purpose, owner_of_request())
    count = lines.count_lines(stored.path)
    most = svc.settings.batch_max_lines
    if count > most:
        svc.files.delete(stored.id)
        raise InvalidRequest(
            f"the file has {count} request lines; a batch input may have at most {most}",
            param="file",
            code="too_many_requests",
        )
    return jsonify(stored.object)


@bp.get("/files")
def list_files():
    limit = int_arg("limit", 10_000, 1, 10_000)
    listed = [f.object for f in services().files.list(owner_of_request(), request.args.get("purpose"))]
    return jsonify(page(list(reversed(listed)), order_arg(), limit, request.args.get("after")))


def stored_file(file_id: str, param: str = "file_id") -> StoredFile:
    """The caller's file; another key's is as unknown as one that never was (404)."""
    stored = services().files.get(file_id, owner_of_request())
    if stored is None:
        raise NotFound(f"no file {file_id!r}", param=param)
    return stored


@bp.get("/files/<file_id>")
def get_file(file_id: str):
    return jsonify(stored_file(file_id).object)


@bp.get("/files/<file_id>/content")
def file_content(file_id: str):
    stored = stored_file(file_id)
    return send_file(stored.path, mimetype="application/jsonl", download_name=stored.object["filename"])


@bp.delete("/files/<file_id>")
def delete_file(file_id: str):
    stored = stored_file(file_id)
    services().files.delete(stored.id)
    return jsonify({"id": stored.id, "object": "file", "deleted": True})
