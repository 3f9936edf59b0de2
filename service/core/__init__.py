"""The service's core: settings, the model runtime, the data plane and its one inference path, batching,
backends, the KServe v2 protocol's rules, errors, statistics, metrics and logs.

It knows no web or RPC framework (``tests/service/test_layers.py`` checks): the transports (``http``,
``grpc``) call it, and ``process`` runs them.
"""
