"""Fit the production workload's user-return constants from MovieLens-100K's timestamps.

`python -m helmrec.load.workload_fit` prints the fitted figures as JSON. The
numbers that the production preset uses are copied into
`helmrec.workload.production` (the workload layer is the ground floor and
cannot read the data set itself); `tests/load/test_workload_fit.py` refits
them and fails if the copies drift.

What is fitted, and how (docs/workload.md has the discussion):

- Interactions: MovieLens logs ratings with one-second timestamps, and half of a
  user's consecutive ratings share a second (a page of ratings submitted at
  once). One *interaction* is a user's ratings within one second; it stands for
  one ranking request (one feed page).
- Sessions: a user's interactions split wherever the gap exceeds
  SESSION_GAP_S (30 min, the usual web-analytics inactivity cut-off).
  `session_return_share` = 1 - sessions / interactions: the share of
  interactions that continue a session, i.e. that come from a user who was
  active less than 30 min before.
- Intra-session gaps: the quantiles of the gaps between consecutive
  interactions of one session (seconds, 1..1800), at GAP_QUANTILES.
- Inter-session gaps: median and coefficient of variation, reported only (hours
  to days: longer than any simulated trace).
- Per-user activity: the Zipf exponent of interactions per user, the negated
  least-squares slope of log(count) against log(rank) over all users.
- History spread: the standard deviation of log(ratings per user); the
  production preset gives its per-user history lengths that log-spread.
- Item popularity: the Zipf exponent of ratings per item, reported only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import numpy as np

from helmrec.hstu.data import MovieLens, load_ml100k

SESSION_GAP_S = 1800
GAP_QUANTILES = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())


@dataclass(frozen=True)
class MovieLensFit:
    """Figures fitted from one MovieLens data set (see the module docstring)."""

    users: int
    ratings: int
    interactions: int
    sessions: int
    session_return_share: float
    intra_session_gap_quantiles_s: tuple[float, ...]  # at GAP_QUANTILES
    intra_session_gap_median_s: float
    inter_session_gap_median_h: float
    inter_session_gap_cv: float
    user_activity_zipf: float
    history_log_sigma: float
    item_popularity_zipf: float


def _zipf_slope(counts: np.ndarray) -> float:
    """Negated least-squares slope of log(count) on log(rank), ranks 1.. by decreasing count."""
    c = np.sort(counts[counts > 0])[::-1].astype(np.float64)
    ranks = np.arange(1, c.shape[0] + 1, dtype=np.float64)
    return float(-np.polyfit(np.log(ranks), np.log(c), 1)[0])


def fit(data: MovieLens) -> MovieLensFit:
    """Fit every figure of `MovieLensFit` from `data` (deterministic: no sampling)."""
    intra: list[np.ndarray] = []
    inter: list[np.ndarray] = []
    interactions = sessions = 0
    per_user = np.array([len(u) for u in data.users], dtype=np.int64)
    for user in data.users:
        seconds = np.unique(user.timestamps)  # one interaction per distinct second, time-ordered
        gaps = np.diff(seconds)
        interactions += seconds.shape[0]
        sessions += 1 + int((gaps > SESSION_GAP_S).sum())
        intra.append(gaps[gaps <= SESSION_GAP_S])
        inter.append(gaps[gaps > SESSION_GAP_S])
    intra_gaps = np.concatenate(intra).astype(np.float64)
    inter_gaps = np.concatenate(inter).astype(np.float64)
    interactions_per_user = np.array([np.unique(u.timestamps).shape[0] for u in data.users])
    item_counts = np.bincount(np.concatenate([u.items for u in data.users]))
    return MovieLensFit(
        users=len(data.users),
        ratings=int(per_user.sum()),
        interactions=interactions,
        sessions=sessions,
        session_return_share=round(1.0 - sessions / interactions, 4),
        intra_session_gap_quantiles_s=tuple(float(q) for q in np.quantile(intra_gaps, GAP_QUANTILES)),
        intra_session_gap_median_s=float(np.median(intra_gaps)),
        inter_session_gap_median_h=round(float(np.median(inter_gaps)) / 3600.0, 2),
        inter_session_gap_cv=round(float(inter_gaps.std() / inter_gaps.mean()), 3),
        user_activity_zipf=round(_zipf_slope(interactions_per_user), 3),
        history_log_sigma=round(float(np.log(per_user).std()), 3),
        item_popularity_zipf=round(_zipf_slope(item_counts), 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helmrec.load.workload_fit", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(json.dumps(asdict(fit(load_ml100k())), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
