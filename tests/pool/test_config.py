"""PoolConfig: built from Triton's string parameters, bad values named by key."""

import pytest

from helmrec.allocator.observation import COUNTERFACTUAL_SHARE
from helmrec.model_config import parameters
from helmrec.pool.config import PoolConfig
from helmrec.resources import model_repository

GOOD = {
    "pool_bytes": "1048576",
    "page_bytes": "4096",
    "alpha": "0.25",
    "refill_bandwidth_bytes_per_s": "1e9",
    "max_move_pages_per_step": "8",
}


def test_from_triton_parameters_parses_strings():
    cfg = PoolConfig.from_triton_parameters(GOOD, device="cpu")
    assert cfg == PoolConfig(1048576, 4096, 0.25, 1e9, 8, "cpu")
    assert cfg.num_pages == 256


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("pool_bytes", "lots", "'pool_bytes' must be an integer"),
        ("page_bytes", "4.5", "'page_bytes' must be an integer"),
        ("alpha", "half", "'alpha' must be a number"),
        ("alpha", "nan", "'alpha' must be finite"),
        ("alpha", "1.5", r"alpha must be a finite number in \[0, 1\]"),
        ("refill_bandwidth_bytes_per_s", "0", "refill_bandwidth_bytes_per_s must be"),
        ("max_move_pages_per_step", "0", "max_move_pages_per_step must be an int >= 1"),
        ("page_bytes", "2097152", "must not exceed pool_bytes"),
        ("page_bytes", "4097", "multiple of 8"),
        ("counterfactual_share", "0", r"counterfactual_share must be a finite number in \(0, 1\)"),
        ("counterfactual_share", "tenth", "'counterfactual_share' must be a number"),
    ],
)
def test_bad_value_names_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        PoolConfig.from_triton_parameters({**GOOD, key: value})


def test_missing_keys_are_listed():
    params = {k: v for k, v in GOOD.items() if k not in ("alpha", "page_bytes")}
    with pytest.raises(ValueError, match="missing from the model config: page_bytes, alpha"):
        PoolConfig.from_triton_parameters(params)


def test_non_string_value_is_rejected():
    with pytest.raises(ValueError, match="'pool_bytes' must arrive as a string"):
        PoolConfig.from_triton_parameters({**GOOD, "pool_bytes": 1048576})


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        PoolConfig(1024, 64, 0.5, 1e6, 1, device="tpu")


def test_counterfactual_share_is_optional_and_parsed_when_given():
    assert PoolConfig.from_triton_parameters(GOOD).counterfactual_share == PoolConfig.counterfactual_share
    assert PoolConfig.from_triton_parameters({**GOOD, "counterfactual_share": "0.2"}).counterfactual_share == 0.2


def test_packaged_pool_measures_the_share_the_policy_was_trained_at():
    """The ghost's share comes from the packaged hstu_pool config (or PoolConfig's default when it
    names none); the policy reads the counts as taken at the allocator's share. Nothing else ties
    the two, so a drift would silently feed the controller hit rates at the wrong capacities."""
    served = parameters(model_repository() / "hstu_pool" / "config.pbtxt")
    assert PoolConfig.from_triton_parameters(served).counterfactual_share == COUNTERFACTUAL_SHARE
