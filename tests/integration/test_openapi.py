"""docs/openapi.yaml against the live stack: schemathesis generates requests for
every public endpoint from the document and sends them through real nginx;
every answer must be documented (status, headers, JSON body) and none a 5xx.
Fixed seed, bounded examples; the counts are printed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.failures import FailureGroup

from devstack.stack import ROOT, Stack
from tests.visitors import COOKIE

pytestmark = pytest.mark.integration

SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}  # type: ignore[union-attr]
EXAMPLES = 30  # per operation


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> Iterator[list[str | None]]:
    """Cookies of real visitors of one queue: none, admitted (capacity 2) and waiting."""
    found: list[str | None] = [None]
    with requests.Session() as s:
        for _ in range(4):
            s.cookies.clear()
            r = s.get(stack.url + "/q/openapi/", allow_redirects=False, timeout=10)
            found.append(r.cookies.get(f"{COOKIE}_openapi"))
    assert len({t for t in found if t}) == 4
    yield found


def operation_params() -> list[object]:
    params: list[object] = []
    for label in OPERATIONS:
        params.append(pytest.param(label, id=label))
    return params


@pytest.mark.parametrize("label", operation_params())
def test_endpoint_matches_its_openapi_document(
    label: str, stack: Stack, tokens: list[str | None]
) -> None:
    operation = OPERATIONS[label]
    answers: Counter[int] = Counter()

    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=EXAMPLES,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), token=st.sampled_from(tokens))
    def run(case: schemathesis.Case, token: str | None) -> None:  # type: ignore[type-arg]
        cookies = {COOKIE: token} if token else {}
        response = case.call(base_url=stack.url, cookies=cookies, allow_redirects=False)
        answers[response.status_code] += 1
        assert response.status_code < 500, (response.status_code, response.text[:300])
        case.validate_response(response)

    try:
        run()
    finally:
        total = sum(answers.values())
        print(f"\nschemathesis {label}: {total} requests; answers {dict(sorted(answers.items()))}")
    # small input spaces (keepalive has no parameters) run out before EXAMPLES
    assert sum(answers.values()) >= min(EXAMPLES // 2, len(tokens))


def test_an_undocumented_answer_is_caught(stack: Stack) -> None:
    """The check above can fail: a document that promises another state is refuted."""
    doc = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    doc["components"]["schemas"]["NoPlace"]["properties"]["state"]["enum"] = ["elsewhere"]
    wrong = schemathesis.openapi.from_dict(doc)
    operation = wrong["/_anteroom/status"]["GET"]
    case = wrong.make_case(operation=operation, query={})
    response = case.call(base_url=stack.url, allow_redirects=False)
    assert response.status_code == 200 and response.json()["state"] == "none"
    with pytest.raises(FailureGroup):
        case.validate_response(response)
