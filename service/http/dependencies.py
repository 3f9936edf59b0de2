"""FastAPI's view of the running service: the state, the model a path names, and the API key check.

The inference routes take none of these (no dependency injection on the hot path): they go through
:meth:`niff_serve.core.dataplane.DataPlane.call`, which checks the key the same way.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from niff_serve.core.runtime import ModelRuntime
from niff_serve.core.state import ServiceState

_bearer = HTTPBearer(auto_error=False, description="The server's NIFF_API_KEY, when it has one.")
# How the OpenAPI document names the scheme (the name HTTPBearer gives it), for operations that check
# the key themselves.
SECURITY = [{"HTTPBearer": []}]


def service_state(request: Request) -> ServiceState:
    """The running service."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_state)]


async def require_api_key(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The data plane's key check with the token the bearer scheme found."""
    state.dataplane.authorize(credentials.credentials if credentials else None)


def requested_model(name: str, request: Request, state: State) -> ModelRuntime:
    """The model named in the path (404 when unknown or at another version)."""
    return state.dataplane.model(name, request.path_params.get("version"))


Model = Annotated[ModelRuntime, Depends(requested_model)]
