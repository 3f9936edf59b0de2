"""``python -m niff_serve`` is ``niff-serve``."""

from niff_serve.cli import main

main()
