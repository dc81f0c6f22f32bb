"""``python -m monmouth`` runs the CLI."""

from .cli import main

main()
