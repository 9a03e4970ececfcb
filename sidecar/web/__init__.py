"""What nginx talks to: the app factory, visitors, the auth endpoint (gate), the
public endpoints (status), tokens, the fast pass and health."""

from .app import create_app
from .gate import Gate
from .status import Status
from .tokens import Signer, Token
from .visitors import TooManyJoins, Visitors

__all__ = ["Gate", "Signer", "Status", "Token", "TooManyJoins", "Visitors", "create_app"]
