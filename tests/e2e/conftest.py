import openai
import pytest


@pytest.fixture(scope="session")
def sdk(api_server) -> openai.OpenAI:
    """The official client against bin/api; no retries, so errors surface as they are."""
    return openai.OpenAI(base_url=api_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def tools_model(start_worker) -> str:
    """tiny-chat with a context long enough for tool schemas, on a worker of its own."""
    start_worker(TOOLS_MODEL)
    return TOOLS_MODEL


TOOLS_MODEL = "tiny-chat-tools"
