"""The ledger: its words (vocabulary.py), how a Sage posting is classified (classify.py), the
settings a company's ledger is read with (settings.py), the reconcile queue's statement
(dirty.py) and the advisory-lock namespaces (locks.py). Every feature takes these from here;
none imports a feature."""
