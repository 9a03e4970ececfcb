"""The queue engine: Redis scripts, keys, the per-process refresher; no aiohttp."""

from .client import StorageError
from .engine import REFUSED, Busy, Claim, Engine, QueueRef, QueueState
from .history import History
from .refresher import Refresher, TooManyQueues

__all__ = [
    "REFUSED",
    "Busy",
    "Claim",
    "Engine",
    "History",
    "QueueRef",
    "QueueState",
    "Refresher",
    "StorageError",
    "TooManyQueues",
]
