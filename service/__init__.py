"""niff-serve: the inference service for exported NIFF models (REST classification and KServe v2)."""

from niff_serve.version import __version__

__all__ = ["__version__"]
