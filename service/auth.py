"""Optional bearer-token auth for model endpoints; health and metrics stay open for probes and scrapers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from niff_serve.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="The server's NIFF_API_KEY, when it has one.")


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Pass when no key is configured or the bearer token matches it (constant-time comparison)."""
    key = request.app.state.service.settings.api_key
    if key is None:
        return
    if credentials is None:
        raise Unauthorized("this endpoint needs 'Authorization: Bearer <api key>'")
    if not hmac.compare_digest(credentials.credentials.encode(), key.get_secret_value().encode()):
        raise Unauthorized("the API key is not valid")
