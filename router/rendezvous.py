"""A user's home backend by rendezvous (highest-random-weight) hashing.

Every router replica computes the same order of backends for a user from two
things all replicas share, the user id and the backend addresses, so replicas
that never talk place a user on the same backend. When a backend goes down
only the users whose first choice it was move (each to its own second choice,
spread over the rest); when it comes back exactly those users return. The hash
is a fixed-key blake2b of the address mixed with the user id by splitmix64,
never Python's `hash()`, which is salted per process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

_MASK64 = (1 << 64) - 1
_KEY = b"helmrec-rendezvous-v1"


@lru_cache(maxsize=4096)
def backend_seed(name: str) -> int:
    """64-bit seed of a backend address, the same in every process."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=_KEY).digest(), "little")


def weight(user_id: int, seed: int) -> int:
    """splitmix64 of (user, backend): the user's random weight for that backend."""
    z = (((user_id & _MASK64) ^ seed) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def home_order(user_id: int, names: Sequence[str]) -> list[int]:
    """Indices of `names`, the user's home first, then where it goes if that one cannot take it."""
    weights = [weight(user_id, backend_seed(name)) for name in names]
    return sorted(range(len(names)), key=weights.__getitem__, reverse=True)
