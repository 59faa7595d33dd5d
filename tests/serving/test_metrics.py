"""User story: an operator scrapes Triton's metrics port and sees the pool work —
a returning user's request reuses its cached KV prefix, and the scores it gets
are the scores an uncached network gives."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest

from tests.serving.test_e2e import Request, expected_scores, infer_grpc

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[str, float]:
    """helmrec_* samples of the metrics page, keyed by name plus labels as printed."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()  # noqa: S310 - loopback
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^(helmrec_[a-z_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def wait_for(url: str, predicate, timeout_s: float = 10.0) -> dict[str, float]:
    """Metrics are published once per control interval; poll until they show the effect."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_returning_user_hits_kv_cache_with_identical_scores(triton_server, tiny_repository) -> None:
    before = wait_for(triton_server.metrics_url, lambda s: "helmrec_kv_hits_total" in s)
    first = Request(user_id=np.array([4242], np.int64))
    grown = Request(
        user_id=np.array([4242], np.int64),
        history=np.append(first.history, 17),
        timestamps=np.append(first.timestamps, 1000),
        actions=np.append(first.actions, np.int32(1)),
    )
    for request in (first, first, grown):  # miss, full hit, partial hit (extend by one)
        np.testing.assert_allclose(
            infer_grpc(triton_server, request), expected_scores(tiny_repository, request), rtol=1e-4, atol=1e-5
        )
    after = wait_for(
        triton_server.metrics_url,
        lambda s: s.get("helmrec_kv_hits_total", 0) >= before.get("helmrec_kv_hits_total", 0) + 2,
    )
    assert after["helmrec_kv_requests_total"] - before.get("helmrec_kv_requests_total", 0) >= 3
    assert after["helmrec_kv_hits_total"] - before.get("helmrec_kv_hits_total", 0) >= 2
    more = 'helmrec_kv_counterfactual_hits_total{kv="more"}'  # a larger KV side hits whenever this one does
    assert after[more] - before.get(more, 0) >= 2
    assert 0.0 <= after["helmrec_pool_alpha"] <= 1.0
    # The repository's hstu_pool runs the adaptive controller: it has decided at least once.
    decided = wait_for(triton_server.metrics_url, lambda s: "helmrec_controller_decision_us" in s)
    assert decided["helmrec_controller_decision_us"] > 0
    pages = after['helmrec_pool_pages{side="emb"}'] + after['helmrec_pool_pages{side="kv"}']
    assert pages > 0
