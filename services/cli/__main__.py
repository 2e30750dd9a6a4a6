"""``python -m services.cli``: the same as the ``provision`` command."""

from services.cli.main import main

main()
