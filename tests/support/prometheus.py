"""Ask a real Prometheus (the integration tests' `prometheus` fixture) a PromQL query."""

from __future__ import annotations

import requests


def query(url: str, promql: str) -> list[dict]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]
