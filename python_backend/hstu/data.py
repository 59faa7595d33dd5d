"""MovieLens-100K from the installed `recbole` wheel, split leave-last-out by time.

The wheel ships `dataset_example/ml-100k/ml-100k.inter`; we locate it with
importlib (recbole is installed with --no-deps, so it is found, never
imported) and never download or commit it. Raw item ids 1..1682 are used as
rows of the item table unchanged (the ml100k preset has 1683 rows; row 0 is
never an item).

Per user, events are ordered by timestamp (ties keep file order): the last
event is the test target, the second last the validation target, the rest is
training history. Actions and the second task come from the rating:
rating >= 4 is action 1 ("liked"), else action 0.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIGH_RATING = 4
INTER_FILE = Path("dataset_example") / "ml-100k" / "ml-100k.inter"
# Task columns of the multi-task head, in order.
TASKS = ("next_item", "high_rating")


def ml100k_path() -> Path:
    """Where the recbole wheel keeps ml-100k.inter; a clear error if it is not installed."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MovieLens-100K comes from the recbole wheel: `pip install --no-deps recbole`")
    path = Path(list(spec.submodule_search_locations)[0]) / INTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed recbole wheel does not ship ml-100k.inter")
    return path


@dataclass(frozen=True)
class UserHistory:
    """One user's events, oldest first (int64 numpy arrays of equal length)."""

    user_id: int
    items: np.ndarray
    timestamps: np.ndarray
    actions: np.ndarray

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def cut(self, end: int, max_len: int) -> UserHistory:
        """Events [.., end) keeping at most the most recent `max_len`."""
        start = max(0, end - max_len)
        return UserHistory(self.user_id, self.items[start:end], self.timestamps[start:end], self.actions[start:end])


@dataclass(frozen=True)
class MovieLens:
    """All users (at least 3 events each, as MovieLens-100K guarantees 20) and the catalogue size."""

    users: tuple[UserHistory, ...]
    num_items: int

    def train(self, user: UserHistory) -> UserHistory:
        """Training part: everything but the validation and test targets."""
        return user.cut(len(user) - 2, len(user))

    def item_counts(self) -> np.ndarray:
        """Interactions per item over the training parts only (the most-popular baseline's scores)."""
        counts = np.zeros(self.num_items, dtype=np.int64)
        for user in self.users:
            np.add.at(counts, self.train(user).items, 1)
        return counts


def load_ml100k(path: Path | None = None) -> MovieLens:
    """Parse ml-100k.inter (tab separated, header `user_id:token item_id:token rating:float timestamp:float`)."""
    path = ml100k_path() if path is None else path
    raw = np.loadtxt(path, delimiter="\t", skiprows=1, dtype=np.int64)
    if raw.ndim != 2 or raw.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 tab-separated columns (user, item, rating, timestamp)")
    users, items, ratings, times = raw.T
    order = np.lexsort((np.arange(len(users)), times, users))  # by user, then time, then file order
    users, items, ratings, times = users[order], items[order], ratings[order], times[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    histories = []
    for u_items, u_ratings, u_times, u_ids in zip(
        np.split(items, bounds), np.split(ratings, bounds), np.split(times, bounds), np.split(users, bounds)
    ):
        if len(u_items) < 3:
            continue  # no room for train, validation and test
        actions = (u_ratings >= HIGH_RATING).astype(np.int64)
        histories.append(UserHistory(int(u_ids[0]), u_items, u_times, actions))
    return MovieLens(tuple(histories), int(items.max()) + 1)
