"""``python -m editflow`` runs the command line."""

from .cli import main

main()
