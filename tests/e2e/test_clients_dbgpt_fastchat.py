"""DB-GPT's and FastChat's clients, configured as their docs say, against bin/api and bin/worker.

The pre-1.0 openai SDK (``openai.api_base = ...``, ``openai.ChatCompletion.create``) that both
projects' docs use runs for real: openai 0.28 in a virtual environment of its own, driven through
subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import requests

LEGACY_OPENAI = "openai==0.28.1"
MESSAGES = [{"role": "user", "content": "Tell me about Redis."}]
QUERY = "what is redis"
DOCS = ["Redis is an in-memory store", "Paris is in France", "rq is a Redis queue", "bananas"]
TEXTS = ["a cat sits on the mat", "stock markets fell today"]

#: What pip prints when it cannot reach the package index (as opposed to any other failure).
_NETWORK_ERRORS = (
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ProxyError",
    "connection error",
)


# -- DB-GPT ---------------------------------------------------------------------------------------
def test_dbgpt_relevance_gives_scores_in_document_order(api_server):
    """What DB-GPT's OpenAPIRerankEmbeddings sends and parses (its default key is EMPTY-like)."""
    session = requests.Session()
    session.headers["Authorization"] = "Bearer EMPTY"
    reranked = requests.post(
        api_server.url + "/v1/rerank",
        json={"model": "tiny-reranker", "query": QUERY, "documents": DOCS, "return_documents": False},
        timeout=60,
    ).json()["results"]
    expected = [s for _, s in sorted((r["index"], r["relevance_score"]) for r in reranked)]
    for prefix in ("/api/v1", "/v1"):
        response = session.post(
            api_server.url + prefix + "/beta/relevance",
            json={"model": "tiny-reranker", "query": QUERY, "documents": DOCS},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "tiny-reranker" and body["usage"]["total_tokens"] > 0
        scores = body["data"]
        assert isinstance(scores, list) and len(scores) == len(DOCS)
        assert all(isinstance(s, float) and 0 <= s <= 1 for s in scores)
        assert scores == pytest.approx(expected, abs=1e-5)


def test_dbgpt_openai_proxy_under_api_v1(api_server, sdk):
    """DB-GPT's proxy models point an openai client at ``<server>/api/v1`` with the key EMPTY."""
    client = openai.OpenAI(base_url=api_server.url + "/api/v1", api_key="EMPTY", max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} == {m.id for m in sdk.models.list()}
    kwargs = dict(model="tiny-chat", messages=MESSAGES, max_tokens=12, seed=21)
    whole = client.chat.completions.create(**kwargs)
    assert (
        whole.choices[0].message.content == sdk.chat.completions.create(**kwargs).choices[0].message.content
    )
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
    )
    assert streamed == whole.choices[0].message.content
    completion = client.completions.create(model="tiny-chat", prompt="Once upon", max_tokens=6, seed=3)
    assert completion.choices[0].text == (
        sdk.completions.create(model="tiny-chat", prompt="Once upon", max_tokens=6, seed=3).choices[0].text
    )
    vectors = client.embeddings.create(model="text-embedding-3-small", input=TEXTS)
    expected = sdk.embeddings.create(model="minilm", input=TEXTS)
    for got, want in zip(vectors.data, expected.data, strict=True):
        assert np.allclose(got.embedding, want.embedding, atol=1e-6)


# -- FastChat -------------------------------------------------------------------------------------
def test_fastchat_create_embeddings(api_server, sdk):
    """FastChat's ``/v1/create_embeddings`` (its curl example) answers OpenAI's embeddings shape."""
    response = requests.post(
        api_server.url + "/v1/create_embeddings", json={"model": "minilm", "input": TEXTS[0]}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    expected = sdk.embeddings.create(model="minilm", input=TEXTS[0]).data[0].embedding
    assert np.allclose(body["data"][0]["embedding"], expected, atol=1e-6)


@pytest.fixture(scope="session")
def legacy_python(tmp_path_factory) -> Path:
    """A Python with openai 0.28 (and numpy, which it uses to decode embeddings) in its own venv.

    Skipped only when pip cannot reach the package registry, and never in CI (``CI=true``).
    """
    venv = tmp_path_factory.mktemp("legacy-openai") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--retries",
            "2",
            "--timeout",
            "60",
            LEGACY_OPENAI,
            # The test environment's own numpy: most likely in pip's cache already.
            f"numpy=={np.__version__}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if pip.returncode != 0:
        output = pip.stdout + pip.stderr
        if not any(marker in output for marker in _NETWORK_ERRORS):
            pytest.fail(f"pip could not install {LEGACY_OPENAI}:\n{output}")
        message = f"the package registry is unreachable; cannot install {LEGACY_OPENAI}:\n{output[-2000:]}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message)
        pytest.skip(message)
    return python


_PREAMBLE = """
import json, sys
import openai
assert openai.version.VERSION.startswith("0.28."), openai.version.VERSION
openai.api_base = sys.argv[1]
openai.api_key = "EMPTY"
"""


def run_legacy(python: Path, api_base: str, code: str) -> Any:
    """Run ``code`` with openai 0.28 set up as FastChat's docs do; it leaves its answer in ``result``."""
    script = _PREAMBLE + textwrap.dedent(code) + "\nprint(json.dumps(result))\n"
    proc = subprocess.run([str(python), "-c", script, api_base], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"legacy client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
def test_legacy_sdk_chat_completion_and_stream(legacy_python, api_server, sdk, prefix):
    result = run_legacy(
        legacy_python,
        api_server.url + prefix,
        f"""
        kwargs = dict(model="tiny-chat", messages={MESSAGES!r}, max_tokens=16, seed=31)
        whole = openai.ChatCompletion.create(**kwargs)
        chunks = list(openai.ChatCompletion.create(stream=True, **kwargs))
        result = {{
            "models": [m.id for m in openai.Model.list().data],
            "object": whole.object,
            "created": whole.created,
            "text": whole.choices[0].message.content,
            "role": whole.choices[0].message.role,
            "finish": whole.choices[0].finish_reason,
            "usage": whole.usage.to_dict(),
            "streamed": "".join(c.choices[0].delta.get("content", "") for c in chunks if c.choices),
            "first_role": chunks[0].choices[0].delta.get("role"),
            "finishes": [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason],
            "chunk_objects": sorted({{c.object for c in chunks}}),
        }}
        """,
    )
    expected = sdk.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=16, seed=31)
    assert {"tiny-chat", "minilm", "tiny-reranker"} <= set(result["models"])
    assert result["object"] == "chat.completion" and result["created"] > 0
    assert result["role"] == "assistant"
    assert result["text"] == result["streamed"] == expected.choices[0].message.content
    assert result["finishes"] == [result["finish"]] == [expected.choices[0].finish_reason]
    assert result["first_role"] == "assistant"
    assert result["chunk_objects"] == ["chat.completion.chunk"]
    assert result["usage"]["completion_tokens"] == expected.usage.completion_tokens


def test_legacy_sdk_completion_and_stream(legacy_python, api_server, sdk):
    result = run_legacy(
        legacy_python,
        api_server.url + "/v1",
        """
        kwargs = dict(model="tiny-chat", prompt="Once upon a time", max_tokens=10, seed=8)
        whole = openai.Completion.create(**kwargs)
        chunks = list(openai.Completion.create(stream=True, **kwargs))
        result = {
            "object": whole.object,
            "text": whole.choices[0].text,
            "streamed": "".join(c.choices[0].text for c in chunks if c.choices),
        }
        """,
    )
    expected = sdk.completions.create(model="tiny-chat", prompt="Once upon a time", max_tokens=10, seed=8)
    assert result["object"] == "text_completion"
    assert result["text"] == result["streamed"] == expected.choices[0].text


def test_legacy_sdk_embeddings_by_model_and_by_engine(legacy_python, api_server, sdk):
    result = run_legacy(
        legacy_python,
        api_server.url + "/v1",
        f"""
        texts = {TEXTS!r}
        result = {{
            # The SDK asks for base64 unless told otherwise and decodes it with numpy.
            "default": [d.embedding for d in openai.Embedding.create(model="minilm", input=texts).data],
            "float": [
                d.embedding
                for d in openai.Embedding.create(model="minilm", input=texts, encoding_format="float").data
            ],
            # engine= puts the model in the path: /v1/engines/<model>/embeddings.
            "engine": [
                d.embedding for d in openai.Embedding.create(engine="all-MiniLM-L6-v2", input=texts).data
            ],
        }}
        """,
    )
    expected = [d.embedding for d in sdk.embeddings.create(model="minilm", input=TEXTS).data]
    for name in ("default", "float", "engine"):
        assert np.allclose(result[name], expected, atol=1e-6), name


def test_legacy_sdk_errors(legacy_python, api_server):
    result = run_legacy(
        legacy_python,
        api_server.url + "/v1",
        """
        def caught(call):
            try:
                call()
            except openai.error.OpenAIError as exc:
                return [type(exc).__name__, exc.http_status, getattr(exc, "code", None)]
            return None

        messages = [{"role": "user", "content": "hi"}]
        result = {
            "unknown": caught(lambda: openai.ChatCompletion.create(model="nope", messages=messages)),
            "invalid": caught(
                lambda: openai.ChatCompletion.create(model="tiny-chat", messages=messages, temperature=9)
            ),
            "no_worker": caught(lambda: openai.ChatCompletion.create(model="ghost", messages=messages)),
            "stream_unknown": caught(
                lambda: list(openai.ChatCompletion.create(model="nope", messages=messages, stream=True))
            ),
        }
        """,
    )
    assert result["unknown"] == ["InvalidRequestError", 404, "model_not_found"]
    assert result["invalid"] == ["InvalidRequestError", 400, "invalid_value"]
    assert result["no_worker"][:2] == ["ServiceUnavailableError", 503]
    assert result["stream_unknown"] == ["InvalidRequestError", 404, "model_not_found"]
