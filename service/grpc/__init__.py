"""The gRPC transport: KServe v2 (Triton's ``GRPCInferenceService``) on the core's data plane."""
