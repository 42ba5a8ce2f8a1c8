"""Policies: load shedding decides which records to process, prioritization which key next."""

from ralf.policies.base import LoadSheddingPolicy, PrioritizationPolicy
from ralf.policies.priority import (
    FIFO,
    LIFO,
    AccuracyAware,
    LeastRecentlyUpdated,
    Lottery,
    MostPending,
    QueryAware,
    Random,
    RoundRobin,
)
from ralf.policies.shedding import KeyWeightedSampling, LatestOnly, NewerThanCurrent, SampleRate

__all__ = [
    "AccuracyAware",
    "FIFO",
    "LIFO",
    "KeyWeightedSampling",
    "LatestOnly",
    "LeastRecentlyUpdated",
    "LoadSheddingPolicy",
    "Lottery",
    "MostPending",
    "NewerThanCurrent",
    "PrioritizationPolicy",
    "QueryAware",
    "Random",
    "RoundRobin",
    "SampleRate",
]
