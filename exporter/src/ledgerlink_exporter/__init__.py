"""ledgerlink-exporter: reads Sage 50's audit trail (over ODBC, or from CSV exports of its
tables) and pushes it to a ledgerlink service as signed batches of postings."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ledgerlink-exporter")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
