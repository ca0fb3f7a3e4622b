"""Split into compute.py (the reconcile statement), runs.py (requested runs) and reports.py.

Left only for service/console/overview.py, until it imports RunRow from service.reconcile.runs
(issue 25's console branch); delete it then.
"""

from service.reconcile.runs import RunRow as RunRow
