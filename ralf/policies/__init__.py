"""Policies: load shedding decides which records to process, prioritization which key next."""

from ralf.policies.base import LoadSheddingPolicy, PrioritizationPolicy
from ralf.policies.priority import FIFO

__all__ = ["FIFO", "LoadSheddingPolicy", "PrioritizationPolicy"]
