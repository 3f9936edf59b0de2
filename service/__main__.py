"""``python -m service`` is ``niff-serve``."""

from service.cli import main

main()
