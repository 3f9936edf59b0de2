"""The installed distribution's version, for ``--version``, ``GET /v2`` and the OpenAPI document.

Kept out of ``service/__init__.py`` so modules never depend on the package initializer having run.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("niff-deploy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
