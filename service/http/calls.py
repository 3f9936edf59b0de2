"""An HTTP request's part in the data plane's one inference path (:meth:`DataPlane.call`): who asks for which
model, how the body is read, and how a client that leaves is noticed."""

from __future__ import annotations

from starlette.requests import Request

from niff_serve.core.auth import bearer_token
from niff_serve.core.body_budget import BodyShare
from niff_serve.core.dataplane import Call, ReadBody, Watch
from niff_serve.core.deadline import Deadline
from niff_serve.core.state import ServiceState
from niff_serve.http.body import read_body
from niff_serve.http.disconnect import cancel_on_disconnect


def http_call(request: Request, name: str, version: str | None = None) -> Call:
    return Call(name, version, bearer_token(request.headers.get("authorization")))


def body_reader(request: Request, state: ServiceState) -> ReadBody:
    """The body, read within the upload limit, the deadline and the request's share of the budget."""

    async def read(deadline: Deadline, share: BodyShare) -> bytes:
        return await read_body(request, state.settings.max_upload_bytes, deadline, share)

    return read


def watch(request: Request) -> Watch:
    """The inference, cancelled (freeing its place in the batch) when the client disconnects."""
    return lambda work: cancel_on_disconnect(request.receive, work)
