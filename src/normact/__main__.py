"""``python -m normact`` runs the command line."""

from normact.cli import main

main()
