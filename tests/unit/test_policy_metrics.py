"""Prometheus rendering of the policy engine's status."""

from __future__ import annotations

from fabric.policy.metrics import render_metrics


def test_render_metrics() -> None:
    status = {"node": {"name": "n1"}, "networks": [
        {"name": "pod", "policy_status": {
            "policies": 2, "transactions": 7,
            "drops": {"policies": {"default/deny": {"ingress": 5, "egress": 0}},
                      "endpoints": {'default/"odd"': {"ingress": 5}}}}},
        {"name": "other", "policy_status": {"engine": "none"}}]}
    text = render_metrics(status)
    assert 'netfabric_policy_policies{node="n1",network="pod"} 2' in text
    assert 'netfabric_policy_transactions_total{node="n1",network="pod"} 7' in text
    assert ('netfabric_policy_drops_total{node="n1",network="pod",policy="default/deny",'
            'direction="ingress"} 5') in text
    assert 'endpoint="default/\\"odd\\"",direction="ingress"} 5' in text
    assert "# TYPE netfabric_policy_drops_total counter" in text
    assert 'network="other"' not in text
