"""Optional bearer-token auth for model endpoints; health and metrics stay open for probes and scrapers.

One check for both transports: HTTP's ``Authorization`` header and gRPC's ``authorization`` metadata.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from niff_serve.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="The server's NIFF_API_KEY, when it has one.")


# How the OpenAPI document names the scheme (the name HTTPBearer gives it), for operations that check
# the key themselves.
SECURITY = [{"HTTPBearer": []}]


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """FastAPI dependency: :func:`check_api_key` with the token the bearer scheme found."""
    check_api_key(request.app.state.service.settings.api_key, credentials.credentials if credentials else None)


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
