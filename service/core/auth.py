"""Optional bearer-token auth for model endpoints; health and metrics stay open for probes and scrapers.

One check for every transport: HTTP's ``Authorization`` header and gRPC's ``authorization`` metadata.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from niff_serve.core.errors import Unauthorized


def check_api_key(key: SecretStr | None, token: str | None) -> None:
    """Pass when no key is configured or ``token`` matches it (constant-time comparison)."""
    if key is None:
        return
    if token is None:
        raise Unauthorized("this endpoint needs 'Authorization: Bearer <api key>'")
    if not hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
        raise Unauthorized("the API key is not valid")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme case-insensitive), else None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
