"""The Grafana dashboard and the Prometheus alert rules in ``deploy/`` query only metrics that
``GET /metrics`` of a running daemon serves (after a streamed and a plain chat request and one
chain job, so every labelled histogram has children). A renamed or removed metric fails here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.inprocess_daemon import daemon_on_anvil

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "tangle-llm-operator.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bblueprint_[a-z0-9_]+\b")


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dashboard_exprs(value)


def queries() -> dict[str, list[str]]:
    """Source name -> its PromQL expressions."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(ALERTS.read_text())
    return {
        "dashboard": list(_dashboard_exprs(dashboard)),
        "alerts": [rule["expr"] for group in rules["groups"] for rule in group["rules"]],
    }


def test_dashboard_and_rules_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    rules = yaml.safe_load(ALERTS.read_text())
    names = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert len(names) == len(set(names)) >= 10
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
    for source, exprs in queries().items():
        assert exprs, source
        for expr in exprs:
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert METRIC.search(expr), (source, expr)


@pytest.mark.chain
@pytest.mark.slow
async def test_every_queried_metric_is_served(tmp_path: Path, tiny_model_dir: Path) -> None:
    async with daemon_on_anvil(tmp_path, tiny_model_dir) as daemon:
        async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as http:
            chat = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
            assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
            streamed = await http.post("/v1/chat/completions", json={**chat, "stream": True})
            assert streamed.status_code == 200
            await daemon.chat_job()
            text = (await http.get("/metrics")).text
    families = list(text_string_to_metric_families(text))
    # a sample, or a family declared with no sample yet (a gauge only some engines report, such
    # as the KV-cache use of vLLM nodes, or the head lag before the first chain snapshot)
    served = {sample.name for family in families for sample in family.samples}
    served |= {family.name for family in families if family.type in ("gauge", "unknown")}
    missing = {source: sorted({name for expr in exprs for name in METRIC.findall(expr)} - served)
               for source, exprs in queries().items()}
    assert missing == {"dashboard": [], "alerts": []}
