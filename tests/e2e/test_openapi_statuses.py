"""Every status code the governance and certificate routes answer is documented in the
OpenAPI."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Stack

DOCUMENTED = [
    ("get", "/v1/audit", {"200", "401", "422"}),
    ("get", "/v1/dashboard", {"200", "401"}),
    ("get", "/metrics", {"200"}),
    ("post", "/codec/decode", {"200", "401", "422"}),
    ("post", "/codec/encode", {"200", "401", "422"}),
    ("post", "/codec/ui/{token}/decode", {"200", "401", "422"}),
    ("post", "/codec/ui/{token}/encode", {"200", "401", "422"}),
    (
        "post",
        "/v1/credentials/{credential_id}/operations",
        {"200", "202", "401", "404", "422", "503"},
    ),
    ("post", "/v1/tasks", {"201", "401", "403", "409", "422", "503"}),
    ("get", "/v1/tasks", {"200", "401", "403", "422"}),
    ("delete", "/v1/tasks/{task_id}", {"200", "401", "403", "404", "503"}),
    ("patch", "/v1/tasks/{task_id}", {"200", "401", "403", "404", "409", "422", "503"}),
    ("post", "/v1/tasks/{task_id}/runs", {"202", "401", "403", "404", "409", "422", "503"}),
    ("get", "/v1/tasks/{task_id}/runs", {"200", "401", "403", "404", "422"}),
    ("get", "/v1/tasks/{task_id}/runs/{run_id}", {"200", "401", "403", "404"}),
    (
        "post",
        "/v1/tasks/{task_id}/runs/{run_id}/cancel",
        {"202", "401", "403", "404", "409", "503"},
    ),
    ("post", "/v1/certificates", {"201", "401", "403", "409", "422", "503"}),
    ("get", "/v1/certificates", {"200", "401", "422"}),
    (
        "post",
        "/v1/certificates/{certificate_id}/approve",
        {"200", "401", "403", "404", "409", "422", "503"},
    ),
    (
        "post",
        "/v1/certificates/{certificate_id}/revoke",
        {"202", "401", "403", "404", "409", "422", "503"},
    ),
    (
        "post",
        "/v1/certificates/{certificate_id}/publish",
        {"202", "401", "403", "404", "409", "422", "503"},
    ),
    (
        "post",
        "/v1/certificates/{certificate_id}/renew",
        {"202", "401", "403", "404", "409", "422", "503"},
    ),
    ("get", "/v1/cas/{ca_name}/crl", {"200", "401", "403", "404"}),
]


@pytest.mark.parametrize(("method", "path", "statuses"), DOCUMENTED)
async def test_statuses_are_documented(
    stack: Stack, method: str, path: str, statuses: set[str]
) -> None:
    spec = await stack.get("/openapi.json")
    assert statuses <= set(spec["paths"][path][method]["responses"]), path
