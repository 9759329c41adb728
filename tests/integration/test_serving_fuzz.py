"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis), against a
real ``bentoml serve`` process on 127.0.0.1 over a tiny random champion.

Every generated request, valid (positive) or not (negative), must get an answer that is not a
5xx and conforms to the document: a documented status, content type, headers and body schema;
invalid input must be rejected with a 4xx. At least ``MIN_CASES`` cases run in all.

One deliberate relaxation: for ``/feedback`` a well-formed label may still be unknown to the live
model (its labels are not in the document, they change with the model), so 422 is an accepted
answer to valid data there.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from conftest import save_tiny_model

TOKEN = "fuzz-admin-token"
MAX_EXAMPLES = 100  # per POST operation and generation mode: 600 cases from the POST operations
MIN_CASES = 500
CASES: list[str] = []  # "METHOD path status" per case run, for the count check at the end
CONFIG = {
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "422"]},
    },
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from tuneloop.serving.launch import running_server
    from tuneloop.state.home import Home
    from tuneloop.state.registry import promote

    home = Home(tmp_path_factory.mktemp("fuzz") / "home").ensure()
    promote(home, save_tiny_model(home), reason="first model")
    env = {"TUNELOOP_ADMIN_TOKEN": TOKEN, "TUNELOOP_POLL_SECONDS": "3600", "TUNELOOP_ACCESS_LOG": "0"}
    with running_server(home, env=env, ready_timeout=120) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/docs.json", config=config)


# (method, path, generation mode, examples). schemathesis' own pytest integration
# (`schemathesis.pytest.from_fixture`) fails on pytest 9 (`Function` has no `_nodeid`), so the
# cases are drawn from its per-operation hypothesis strategies, which is its documented library use.
OPERATIONS = [
    *[(method, path, mode, MAX_EXAMPLES) for method, path in (("POST", "/classify"), ("POST", "/feedback"),
                                                             ("POST", "/admin/reload"))
      for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)],
    *[("GET", path, schemathesis.GenerationMode.POSITIVE, 3) for path in ("/healthz", "/livez", "/readyz", "/metrics")],
]


@pytest.mark.parametrize(("method", "path", "mode", "examples"), OPERATIONS,
                         ids=[f"{m} {p} {g.value}" for m, p, g, _ in OPERATIONS])
def test_api_answers_conform_and_never_5xx(api_schema, fuzz_server, method, path, mode, examples):
    operation = api_schema[path][method]

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def check(case):
        response = case.call_and_validate(base_url=fuzz_server.url, timeout=30)
        CASES.append(f"{method} {path} {response.status_code}")
        assert response.status_code < 500

    check()


def test_enough_cases_ran():
    if not CASES:
        pytest.skip("the fuzzing tests did not run (deselected)")
    statuses = sorted({c for c in CASES})
    assert len(CASES) >= MIN_CASES, f"only {len(CASES)} cases ran; statuses seen: {statuses}"
    assert any(c.startswith("POST /classify 200") for c in CASES), statuses
    assert any(c.startswith("POST /classify 400") for c in CASES), statuses
