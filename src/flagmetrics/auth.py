"""Internal: access control for the metrics: a bearer token or HTTP basic auth, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac

from flagmetrics.config import Settings
from flagmetrics.exceptions import ConfigurationError

__all__ = ["Credentials", "credentials_for"]


class Credentials:
    """What a scraper must present in its `Authorization` header."""

    __slots__ = ("_basic", "_token")

    def __init__(self, bearer_token: str | None = None, basic_auth: tuple[str, str] | None = None) -> None:
        """Require a bearer token, basic auth, or either of the two when both are given."""
        if bearer_token is not None and not bearer_token:
            raise ConfigurationError("`bearer_token` must not be empty; pass None to serve without auth")
        if basic_auth is not None and (len(basic_auth) != 2 or not all(basic_auth)):
            raise ConfigurationError("`basic_auth` must be a (user, password) pair of non-empty strings")
        if bearer_token is None and basic_auth is None:
            raise ConfigurationError("give `bearer_token`, `basic_auth` or both")
        self._token = bearer_token.encode() if bearer_token else None
        self._basic = f"{basic_auth[0]}:{basic_auth[1]}".encode() if basic_auth else None

    @property
    def challenge(self) -> str:
        """The `WWW-Authenticate` value of a 401 answer."""
        return 'Bearer realm="metrics"' if self._token is not None else 'Basic realm="metrics"'

    def allows(self, header: str | None) -> bool:
        """Whether an `Authorization` header value carries the right credentials."""
        scheme, _, value = (header or "").partition(" ")
        scheme = scheme.lower()
        if self._token is not None and scheme == "bearer":
            return hmac.compare_digest(value.strip().encode(), self._token)
        if self._basic is not None and scheme == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, self._basic)
        return False


def credentials_for(
    settings: Settings, *, bearer_token: str | None = None, basic_auth: tuple[str, str] | None = None
) -> Credentials | None:
    """What scrapers must present: `bearer_token` (default `settings.metrics_token`) and/or basic auth.

    None when neither is set: the metrics are served without auth.
    """
    token = bearer_token if bearer_token is not None else settings.metrics_token
    if token is None and basic_auth is None:
        return None
    return Credentials(token, basic_auth)
