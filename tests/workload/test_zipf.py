"""CompactZipf is the table law without the table: same CDF, same ranks, a bijection over every id."""

from __future__ import annotations

import numpy as np
import pytest

from helmrec.workload.zipf import CompactZipf, TableZipf, zipf_cdf


@pytest.mark.parametrize("exponent", [0.0, 0.7, 1.0, 1.3])
def test_compact_cdf_and_ranks_match_the_table(exponent: float) -> None:
    n = 200_000  # beyond the exact head, so the integral tail is exercised
    compact = CompactZipf(n, exponent, key=5, first_id=1)
    table = TableZipf(zipf_cdf(n, exponent), np.arange(1, n + 1, dtype=np.int64))
    rows = np.array([-3, 0, 1, 10, 65_535, 65_536, 65_537, 100_000, n - 1, n, 10 * n])
    np.testing.assert_allclose(compact.cdf_at(rows), table.cdf_at(rows), rtol=0, atol=1e-11)
    u = np.random.default_rng(0).random(200_000)
    np.testing.assert_array_equal(compact.rank_of_uniform(u), table.rank_of_uniform(u))


@pytest.mark.parametrize("size", [1, 2, 7, 1000, 65_537])
def test_ids_are_a_bijection_onto_the_id_range(size: int) -> None:
    law = CompactZipf(size, 0.7, key=11, first_id=1)
    ids = law.id_of_rank(np.arange(size, dtype=np.int64))
    np.testing.assert_array_equal(np.sort(ids), np.arange(1, size + 1))
    np.testing.assert_array_equal(law.rank_of_id(ids), np.arange(size))


def test_fifty_million_ids_reachable_and_keyed() -> None:
    n = 50_000_000
    law = CompactZipf(n, 0.7, key=3, first_id=1)
    ranks = np.arange(0, n, 997, dtype=np.int64)
    ranks[-1] = n - 1
    ids = law.id_of_rank(ranks)
    assert ids.min() >= 1 and ids.max() <= n and np.unique(ids).size == ranks.size
    np.testing.assert_array_equal(law.rank_of_id(ids), ranks)
    # The least popular rank has an id, and a draw reaches it when u is close enough to 1.
    assert law.rank_of_uniform(np.array([1.0 - 1e-16]))[0] == n - 1
    np.testing.assert_array_equal(CompactZipf(n, 0.7, key=3, first_id=1).id_of_rank(ranks), ids)
    assert not np.array_equal(CompactZipf(n, 0.7, key=4, first_id=1).id_of_rank(ranks), ids)


def test_bad_law_names_the_rule() -> None:
    with pytest.raises(ValueError, match="size >= 1"):
        CompactZipf(0, 0.7, key=1)
    with pytest.raises(ValueError, match="1-D"):
        TableZipf(np.ones(3), np.arange(4))
