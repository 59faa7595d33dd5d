"""HSTU cached inference equals the uncached forward, for both variants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helmrec.hstu.config import HSTUConfig, preset
from helmrec.hstu.model import HSTU

torch.set_num_threads(1)
VARIANTS = ("research", "production")
ATOL = 1e-5


def _model(variant: str, seed: int = 0) -> HSTU:
    torch.manual_seed(seed)
    model = HSTU(dataclasses.replace(preset("tiny"), variant=variant)).eval()
    # Random (not zero) marker and biases so every term is exercised.
    with torch.no_grad():
        model.target_marker.normal_()
    return model


def _history(model: HSTU, n: int, gen: torch.Generator):
    cfg = model.config
    ids = torch.randint(0, cfg.num_items, (n,), generator=gen)
    gaps = torch.randint(0, 10**6, (n,), generator=gen)
    ts = 1_700_000_000 + torch.cumsum(gaps, 0)
    actions = torch.randint(0, cfg.num_actions, (n,), generator=gen)
    return model.embed_items(ids), ts, actions


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 33, 64])
def test_rank_after_prefill_equals_forward(variant: str, n: int) -> None:
    model = _model(variant)
    gen = torch.Generator().manual_seed(n)
    with torch.inference_mode():
        emb, ts, actions = _history(model, n, gen)
        cand = model.embed_items(torch.randint(0, model.config.num_items, (9,), generator=gen))
        query_ts = (int(ts[-1]) if n else 1_700_000_000) + 12_345
        reference = model(emb, ts, actions, cand, query_ts)
        kv = model.prefill(emb, ts, actions)
        cached = model.rank(kv, ts, cand, query_ts)
    assert kv.shape == (model.config.num_layers, n, model.kv_width)
    assert cached.dtype == torch.float32 and cached.shape == (9, model.config.num_tasks)
    torch.testing.assert_close(cached, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("n0", "n1"), [(0, 1), (1, 1), (5, 1), (1, 12), (20, 17), (63, 1)])
def test_prefill_of_whole_equals_prefix_then_extend(variant: str, n0: int, n1: int) -> None:
    model = _model(variant, seed=1)
    gen = torch.Generator().manual_seed(100 * n0 + n1)
    with torch.inference_mode():
        emb, ts, actions = _history(model, n0 + n1, gen)
        whole = model.prefill(emb, ts, actions)
        prefix = model.prefill(emb[:n0], ts[:n0], actions[:n0])
        extended = model.extend(prefix, emb[n0:], ts, actions[n0:])
        suffix = model.extend_suffix(prefix, emb[n0:], ts, actions[n0:])
    torch.testing.assert_close(extended, whole, atol=ATOL, rtol=0)
    torch.testing.assert_close(suffix, whole[:, n0:], atol=ATOL, rtol=0)
    # the kv of a prefix is exactly the prefix of the kv of the whole history
    torch.testing.assert_close(whole[:, :n0], prefix, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_equals_extend_of_empty(variant: str) -> None:
    model = _model(variant)
    with torch.inference_mode():
        emb, ts, actions = _history(model, 11, torch.Generator().manual_seed(3))
        torch.testing.assert_close(model.prefill(emb, ts, actions), model.extend(model.empty_kv(), emb, ts, actions))


@pytest.mark.parametrize("variant", VARIANTS)
def test_candidates_do_not_see_each_other(variant: str) -> None:
    model = _model(variant)
    gen = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        emb, ts, actions = _history(model, 15, gen)
        cand_ids = torch.randint(0, model.config.num_items, (6,), generator=gen)
        changed = cand_ids.clone()
        changed[2] = (changed[2] + 1) % model.config.num_items
        q = int(ts[-1]) + 60
        before = model.score(torch.zeros(0, dtype=torch.int64), ts[:0], actions[:0], cand_ids, q)
        a = model(emb, ts, actions, model.embed_items(cand_ids), q)
        b = model(emb, ts, actions, model.embed_items(changed), q)
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(a[keep], b[keep], atol=0, rtol=0)
    assert not torch.allclose(a[2], b[2])
    assert before.shape == (6, model.config.num_tasks)


@pytest.mark.parametrize("variant", VARIANTS)
def test_history_kv_ignores_query_time_and_later_tokens(variant: str) -> None:
    """The cache key is the history itself: a later event must not change a cached token."""
    model = _model(variant)
    with torch.inference_mode():
        emb, ts, actions = _history(model, 10, torch.Generator().manual_seed(5))
        kv_a = model.prefill(emb, ts, actions)
        ts_later = ts.clone()
        ts_later[-1] += 10**7  # only the last token's time changes
        kv_b = model.prefill(emb, ts_later, actions)
    torch.testing.assert_close(kv_a[:, :9], kv_b[:, :9], atol=0, rtol=0)


def test_scores_depend_on_query_time_for_research_bias() -> None:
    model = _model("research")
    with torch.inference_mode():
        emb, ts, actions = _history(model, 10, torch.Generator().manual_seed(5))
        cand = model.embed_items(torch.arange(4))
        kv = model.prefill(emb, ts, actions)
        near = model.rank(kv, ts, cand, int(ts[-1]) + 1)
        far = model.rank(kv, ts, cand, int(ts[-1]) + 10**8)
    assert not torch.allclose(near, far)


def test_bad_inputs_name_the_tensor() -> None:
    model = _model("research")
    cfg = model.config
    with torch.inference_mode():
        emb, ts, actions = _history(model, 4, torch.Generator().manual_seed(0))
        kv = model.prefill(emb, ts, actions)
        cand = model.embed_items(torch.arange(3))
        with pytest.raises(ValueError, match="ids: item ids must lie in"):
            model.embed_items(torch.tensor([cfg.num_items]))
        with pytest.raises(ValueError, match="hist_ts: must be an int64 vector of length 4"):
            model.prefill(emb, ts[:3], actions)
        with pytest.raises(ValueError, match="new_actions: action ids must lie in"):
            model.prefill(emb, ts, torch.full((4,), cfg.num_actions))
        with pytest.raises(ValueError, match=r"kv: must have shape"):
            model.rank(kv[:1], ts, cand, 0)
        with pytest.raises(ValueError, match=r"cand_emb: must have shape \[n, 32\]"):
            model.rank(kv, ts, cand[:, :8], 0)
        with pytest.raises(ValueError, match="exceeds max_seq_len"):
            big, big_ts, big_act = _history(model, cfg.max_seq_len + 1, torch.Generator().manual_seed(1))
            model.prefill(big, big_ts, big_act)
        with pytest.raises(ValueError, match="candidates exceed max_candidates"):
            model.rank(kv, ts, model.embed_items(torch.zeros(cfg.max_candidates + 1, dtype=torch.int64)), 0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("variant", "fancy", "variant must be one of"),
        ("num_items", 0, "num_items must be an int >= 1"),
        ("num_heads", 2.0, "num_heads must be an int >= 1"),
        ("d_qk", True, "d_qk must be an int >= 1"),
        ("dropout", 1.0, r"dropout must be a number in \[0, 1\)"),
        ("num_time_buckets", -3, "num_time_buckets must be an int >= 1"),
    ],
)
def test_bad_config_values_raise(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(preset("tiny"), **{field: value})


def test_config_round_trips_and_presets() -> None:
    for name in ("tiny", "ml100k", "large"):
        cfg = preset(name)
        assert HSTUConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("ml100k").num_items == 1683
    large = preset("large")
    assert (large.variant, large.num_layers, large.num_heads, large.d_qk, large.d_v, large.d_model) == (
        "production", 5, 4, 128, 128, 512,
    )
    assert large.kv_width == 4 * 256
    with pytest.raises(ValueError, match="unknown HSTU preset 'huge'"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown keys"):
        HSTUConfig.from_dict({**preset("tiny").to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="missing keys"):
        HSTUConfig.from_dict({k: v for k, v in preset("tiny").to_dict().items() if k != "d_model"})
