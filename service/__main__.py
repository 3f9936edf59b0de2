"""``python -m niff_serve`` is ``niff-serve``."""

from niff_serve.process.cli import main

main()
