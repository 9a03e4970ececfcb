"""The control room: the admin API and dashboard on their own listener, the CLI."""

from .admin import Admin, start_admin
from .cli import Client

__all__ = ["Admin", "Client", "start_admin"]
