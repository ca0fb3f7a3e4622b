"""`python -m ledgerlink_exporter`: the same as the ledgerlink-exporter command."""

from ledgerlink_exporter.cli import main

main()
