"""`helmrec bench-served`'s reading of hstu_pool's Triton statistics over a row, whom its ceiling ranks,
and each server's device memory cap.

Snapshots in the JSON form tritonclient returns (uint64s as strings, zero counters
left out), 1 s apart: 3 executes of 4, 2 and 2 requests (8 requests).
"""

from __future__ import annotations

import argparse

import pytest

from helmrec.load.bench.served import add_traffic_options, device_memory_bytes, node_users, pool_stats_delta


def snapshot(executes: int, requests: int, queue_ns: int, batches: dict[int, tuple[int, int, int, int]]) -> dict:
    """Cumulative statistics: `batches` maps a group size to (count, input, infer, output ns)."""
    stats: dict = {"name": "hstu_pool", "version": "1", "batch_stats": []}
    if executes:
        stats["execution_count"] = str(executes)
        stats["inference_count"] = str(requests)
        stats["inference_stats"] = {"queue": {"count": str(requests), "ns": str(queue_ns)}}
    for size, (count, input_ns, infer_ns, output_ns) in batches.items():
        stats["batch_stats"].append({
            "batch_size": str(size),
            "compute_input": {"count": str(count), "ns": str(input_ns)},
            "compute_infer": {"count": str(count), "ns": str(infer_ns)},
            "compute_output": {"count": str(count), "ns": str(output_ns)},
        })  # fmt: skip
    return stats


def test_delta_over_a_row() -> None:
    before = snapshot(10, 20, 40_000_000, {2: (10, 1_000_000, 50_000_000, 2_000_000)})
    # + one execute of 4 (0.5 + 20 + 1.5 ms) and two of 2 (0.25 + 10 + 0.75 ms each); 8 requests queued 24 ms in all
    after = snapshot(13, 28, 64_000_000, {2: (12, 1_500_000, 70_000_000, 3_500_000), 4: (1, 500_000, 20_000_000, 1_500_000)})
    delta = pool_stats_delta([before], [after], wall_s=1.0)
    assert delta["pool_executes"] == 3
    assert delta["pool_group"] == pytest.approx(8 / 3)
    assert delta["pool_input_ms"] == pytest.approx(1.0 / 3)
    assert delta["pool_infer_ms"] == pytest.approx(40.0 / 3)
    assert delta["pool_output_ms"] == pytest.approx(3.0 / 3)
    assert delta["pool_execute_ms"] == pytest.approx(44.0 / 3)
    assert delta["pool_queue_ms"] == pytest.approx(3.0)
    assert delta["pool_busy"] == pytest.approx(0.044)


def test_a_row_from_a_fresh_server() -> None:
    """Before the first execute Triton leaves every counter out: the delta is the row itself."""
    after = snapshot(2, 2, 1_000_000, {1: (2, 0, 6_000_000, 0)})
    delta = pool_stats_delta([snapshot(0, 0, 0, {})], [after], wall_s=0.5)
    assert (delta["pool_group"], delta["pool_execute_ms"], delta["pool_queue_ms"]) == (1.0, 3.0, 0.5)
    assert delta["pool_busy"] == pytest.approx(0.012)


def test_an_idle_row() -> None:
    stats = snapshot(5, 5, 1_000, {1: (5, 0, 10, 0)})
    delta = pool_stats_delta([stats], [stats], wall_s=2.0)
    assert delta["pool_executes"] == 0
    assert delta["pool_busy"] == delta["pool_execute_ms"] == delta["pool_queue_ms"] == 0.0


def test_nodes_behind_a_router_add_up() -> None:
    """Two nodes: counts and execute time add up, the busy share is each stub's on average."""
    idle = snapshot(0, 0, 0, {})
    one = snapshot(2, 2, 1_000_000, {1: (2, 0, 6_000_000, 0)})
    two = snapshot(1, 4, 4_000_000, {4: (1, 0, 10_000_000, 0)})
    delta = pool_stats_delta([idle, idle], [one, two], wall_s=0.5)
    assert (delta["pool_executes"], delta["pool_group"]) == (3, 2.0)
    assert delta["pool_execute_ms"] == pytest.approx(16.0 / 3)
    assert delta["pool_queue_ms"] == pytest.approx(5.0 / 6)
    assert delta["pool_busy"] == pytest.approx((0.012 + 0.020) / 2)


def test_snapshots_of_different_nodes_are_refused() -> None:
    with pytest.raises(ValueError):
        pool_stats_delta([snapshot(0, 0, 0, {})], [snapshot(0, 0, 0, {}), snapshot(0, 0, 0, {})], wall_s=1.0)


def test_the_ceiling_ranks_one_node_s_share_of_the_users() -> None:
    """With N servers each node caches its share of the users; the in-process ceiling ranks that many
    with one node's pool (all of them would evict KV the served nodes keep)."""
    assert node_users(argparse.Namespace(users=96, servers=4)) == 24
    assert node_users(argparse.Namespace(users=10, servers=4)) == 3
    assert node_users(argparse.Namespace(users=10, servers=1)) == 10


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_traffic_options(parser)
    return parser.parse_args(list(argv))


def test_servers_sharing_a_gpu_get_an_equal_share_of_nine_tenths_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: argparse.Namespace(total_memory=100_000))
    assert device_memory_bytes(_args("--device", "cuda", "--servers", "4")) == 22_500
    assert device_memory_bytes(_args("--device", "cuda")) == 0  # one server alone: no neighbour to leave room for
    assert device_memory_bytes(_args("--servers", "4")) == 0  # the CPU: nothing to cap
    assert device_memory_bytes(_args("--device", "cuda", "--servers", "4", "--device-memory-bytes", "0")) == 0
    assert device_memory_bytes(_args("--device-memory-bytes", "7")) == 7


def test_a_capped_cluster_stages_the_cap_with_its_pool_parameters() -> None:
    from helmrec.load.bench.cluster import ClusterConfig

    assert "device_memory_bytes" not in ClusterConfig().pool_parameters()  # 0: the repository's (no cap)
    with pytest.raises(ValueError, match="ClusterConfig.device_memory_bytes must be >= 0"):
        ClusterConfig(device_memory_bytes=-1)
    config = ClusterConfig(alpha="0.25", device_memory_bytes=1 << 30)
    assert config.pool_parameters() == {
        "controller": "static",
        "pool_bytes": "1048576",
        "alpha": "0.25",
        "device_memory_bytes": str(1 << 30),
    }
