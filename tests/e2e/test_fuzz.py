"""schemathesis generates bodies from /openapi.json and sends them to bin/api: no 5xx, no hang."""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

#: Bounded: a few dozen cases per operation keep the suite short; `bin/test -k fuzz` runs it alone.
MAX_EXAMPLES = 40


def test_generated_requests_never_get_a_server_error(api_server):
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            try:
                response = case.call(base_url=api_server.url, timeout=60)
            except requests.Timeout:
                pytest.fail(f"the API hung on {case.method} {case.formatted_path} {case.body!r}")
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
