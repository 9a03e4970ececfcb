"""The queue engine: Redis scripts, keys, the per-process refresher; no aiohttp."""

from . import codes
from .client import StorageError
from .engine import REFUSED, Busy, Claim, Engine, QueueRef, QueueState
from .refresher import Refresher, TooManyQueues
from .revocations import Known

__all__ = [
    "REFUSED",
    "Busy",
    "Claim",
    "Engine",
    "Known",
    "QueueRef",
    "QueueState",
    "Refresher",
    "StorageError",
    "TooManyQueues",
    "codes",
]
