"""hstu_pool's `device_memory_bytes`: its rules on any machine, its effect on a GPU.

The CUDA test runs in a fresh interpreter: a per-process memory fraction, once set,
stays for the life of the process and would cap every later test in it.
"""

import subprocess
import sys
import textwrap

import pytest
import torch

from helmrec.serving.device_memory import PARAMETER, out_of_memory_message, parse_device_memory_bytes

GiB = 1 << 30


@pytest.mark.parametrize(
    ("raw", "total", "expected"),
    [
        ("0", 80 * GiB, 0),
        (" 0 ", None, 0),
        (str(8 * GiB), 80 * GiB, 8 * GiB),
        (str(80 * GiB), 80 * GiB, 80 * GiB),
        ("5", None, 5),
    ],
)
def test_a_cap_within_the_rules_is_taken_in_bytes(raw: str, total: int | None, expected: int) -> None:
    assert parse_device_memory_bytes(raw, pool_bytes=4, total_bytes=total) == expected


@pytest.mark.parametrize(
    ("raw", "total", "rule"),
    [
        ("8GiB", None, "must be an integer number of bytes"),
        ("1.5e9", 80 * GiB, "must be an integer number of bytes"),
        ("", 80 * GiB, "must be an integer number of bytes"),
        ("-1", 80 * GiB, "must be >= 0"),
        (str(GiB), 80 * GiB, "must exceed pool_bytes"),  # equal to the pool: nothing left beside it
        (str(GiB // 2), None, "must exceed pool_bytes"),  # refused on the CPU too, as a GPU load would be
        (str(80 * GiB + 1), 80 * GiB, "must not exceed the device's total memory"),
    ],
)
def test_each_rule_broken_names_the_parameter(raw: str, total: int | None, rule: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_device_memory_bytes(raw, pool_bytes=GiB, total_bytes=total)
    assert f"'{PARAMETER}'" in str(info.value) and rule in str(info.value)


def test_the_out_of_memory_answer_names_the_cap() -> None:
    assert f"{PARAMETER} = {8 * GiB} bytes, 8.0 GiB" in out_of_memory_message(8 * GiB)
    assert f"{PARAMETER} not set" in out_of_memory_message(0)


CAPPED = textwrap.dedent(
    """
    import torch
    from helmrec.hstu.config import preset
    from helmrec.hstu.model import HSTU
    from helmrec.pool.config import PoolConfig
    from helmrec.pool.ranker import PooledRanker, RankRequest
    from helmrec.serving.device_memory import apply_cap, parse_device_memory_bytes, total_memory

    device = torch.device("cuda", 0)
    pool = PoolConfig(64 * 4096, 4096, 0.5, 1e8, 4, device="cuda")
    cap = parse_device_memory_bytes(str(1 << 30), pool.pool_bytes, total_memory(device))
    apply_cap(cap, device)
    try:
        torch.empty(2 * cap, dtype=torch.uint8, device=device)
    except torch.cuda.OutOfMemoryError:
        pass
    else:
        raise SystemExit("an allocation twice the cap succeeded")
    torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = HSTU(preset("tiny")).eval().to(device)
    ids = torch.arange(10) % model.config.num_items
    ts = 1_000_000 + 60 * torch.arange(10)
    req = RankRequest(1, ids, ts, ids % 2, torch.arange(8), int(ts[-1]) + 5)
    with PooledRanker(model, pool) as ranker:
        got = ranker.rank(req)
        with torch.inference_mode():
            ref = model.score(ids.cuda(), ts.cuda(), (ids % 2).cuda(), torch.arange(8).cuda(), req.query_ts).cpu()
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        ranker.pool.check_invariants()
    assert torch.cuda.max_memory_reserved(device) <= cap, torch.cuda.max_memory_reserved(device)
    print("capped ok")
    """
)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cap_bounds_the_allocator_and_the_ranker_still_ranks_under_it() -> None:
    done = subprocess.run([sys.executable, "-c", CAPPED], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "capped ok" in done.stdout, done.stdout + done.stderr
