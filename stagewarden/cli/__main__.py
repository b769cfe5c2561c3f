"""``python -m stagewarden.cli``: the ``stagewarden`` command where the console script is not on the path."""

from stagewarden.cli import main

main()
