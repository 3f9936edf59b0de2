"""Running the service: the ``niff-serve`` command line, one serving process (HTTP and gRPC together, with
a drain phase), and the supervisor of worker processes with their liveness."""
