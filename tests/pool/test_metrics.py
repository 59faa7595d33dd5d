"""PoolStats -> Triton metric values: names and labels of the contract, counters as window increments."""

from helmrec.pool.metrics import SPECS, metric_values
from helmrec.pool.stats import PoolStats


def _stats(**over):
    base = dict(
        window_s=0.1, requests=10, history_len_sum=200, hot_user_requests=4, emb_lookups=300, emb_hits=210,
        kv_requests=10, kv_hits=6, kv_partial_hits=2, kv_hits_more=7, kv_hits_less=5, kv_tokens=200, kv_hit_tokens=150,
        emb_evictions=5,
        kv_evictions=1, emb_pages=30, kv_pages=70, kv_cached_users=12, h2d_critical_bytes=4096,
        h2d_background_bytes=8192, alpha=0.3, target_alpha=0.5,
    )
    base.update(over)
    return PoolStats(**base)


def test_contract_metrics_and_labels():
    values = metric_values(_stats(), alpha=0.3, decision_us=42.0)
    assert values == {
        ("helmrec_pool_alpha", ()): 0.3,
        ("helmrec_pool_pages", (("side", "emb"),)): 30.0,
        ("helmrec_pool_pages", (("side", "kv"),)): 70.0,
        ("helmrec_emb_lookups_total", ()): 300.0,
        ("helmrec_emb_hits_total", ()): 210.0,
        ("helmrec_kv_requests_total", ()): 10.0,
        ("helmrec_kv_hits_total", ()): 6.0,
        ("helmrec_kv_counterfactual_hits_total", (("kv", "more"),)): 7.0,
        ("helmrec_kv_counterfactual_hits_total", (("kv", "less"),)): 5.0,
        ("helmrec_kv_tokens_total", ()): 200.0,
        ("helmrec_kv_hit_tokens_total", ()): 150.0,
        ("helmrec_evictions_total", (("side", "emb"),)): 5.0,
        ("helmrec_evictions_total", (("side", "kv"),)): 1.0,
        ("helmrec_h2d_bytes_total", (("kind", "critical"),)): 4096.0,
        ("helmrec_h2d_bytes_total", (("kind", "background"),)): 8192.0,
        ("helmrec_kv_cached_users", ()): 12.0,
        ("helmrec_controller_decision_us", ()): 42.0,
    }
    assert {name for name, _ in values} == {spec.name for spec in SPECS}


def test_decision_latency_left_out_until_a_controller_decides():
    assert ("helmrec_controller_decision_us", ()) not in metric_values(_stats(), alpha=0.3)


def test_rates_derived_from_counts():
    s = _stats()
    assert s.emb_hit_rate == 0.7 and s.kv_hit_rate == 0.6 and s.kv_token_hit_rate == 0.75
    assert s.hot_user_share == 0.4 and s.mean_history_len == 20.0 and abs(s.request_rate - 100.0) < 1e-9
    empty = _stats(requests=0, emb_lookups=0, kv_requests=0, kv_tokens=0, window_s=0.0)
    assert (empty.emb_hit_rate, empty.kv_hit_rate, empty.hot_user_share, empty.request_rate) == (0.0, 0.0, 0.0, 0.0)
