"""Property-based fuzzing of the API from its OpenAPI description.

schemathesis reads ``openapi.yaml``, which the API serves unchanged at
``/api/openapi.json`` (tests/test_openapi.py checks that). It sends requests
that fit the spec and requests that break it to every operation of the API
under gunicorn, with a real Redis and a real Celery worker behind it.

No response may have a 5xx status. Every response must have a status, content
type, headers and body that the spec documents for the operation, and a
request that breaks the spec must be rejected. Hypothesis runs derandomized
and without its example database, so every run sends the same requests.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import api_docs
from tests.helpers import LiveApi

pytestmark = pytest.mark.chaos

# Per operation. With 19 operations, many of which have few distinct inputs,
# the file took about 80 s, start-up included, on a shared two-core machine.
EXAMPLES_PER_OPERATION = 100
HTTP_TIMEOUT = 90.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


# NOTE: the schema is loaded from the file because schemathesis 4.32.5's
# from_fixture loader fails under pytest 9.2 (it sets Function._nodeid).
schema = schemathesis.openapi.from_path(api_docs.SPEC_PATH)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
)
def test_api_conforms_to_spec(case: schemathesis.Case, gunicorn_api: LiveApi) -> None:
    response = case.call(base_url=gunicorn_api.url, timeout=HTTP_TIMEOUT)

    assert response.status_code < 500, response.text
    case.validate_response(response, checks=CHECKS)
