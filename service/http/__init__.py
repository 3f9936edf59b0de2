"""The HTTP transport: the FastAPI app, the REST and KServe v2 routes and their JSON codec, request
bookkeeping, connection limits, the OpenAPI document and the page. Inference goes through the core's data
plane (:meth:`niff_serve.core.dataplane.DataPlane.call`)."""
