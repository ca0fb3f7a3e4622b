"""Which CRM the settings name, built: the one module that knows each CRM's folder.

A CRM is a folder under service/crm/ (OpenCRM's: service/crm/opencrm/) providing a connector
(`service.crm.connector.Connector`), a read-back source (`service.crm.readback.ReadBackSource`)
when its statuses can be read back, and its settings as a model in `CrmSettings`.
"""

from __future__ import annotations

import httpx

from service.crm.connector import Connector, LocalConnector
from service.crm.opencrm.connector import OpenCrmConnector
from service.crm.opencrm.readback import OpenCrmReadBackSource
from service.crm.opencrm.settings import OpenCrmSettings
from service.crm.readback import ReadBackSource
from service.crm.settings import CrmMode, CrmSettings

# One advisory lock per claimed invoice: keep a local pass well inside PostgreSQL's lock table
# (max_locks_per_transaction), whatever the reconcile batch size is set to.
LOCAL_BATCH_CAP = 1000


def build_connector(
    crm: CrmSettings,
    http: httpx.AsyncClient,
    *,
    protected_statuses: list[str],
    local_batch_size: int,
) -> Connector:
    if crm.mode is CrmMode.local:
        return LocalConnector(batch_size=min(local_batch_size, LOCAL_BATCH_CAP))
    return OpenCrmConnector.from_settings(
        _opencrm(crm), http, protected_statuses=protected_statuses
    )


def build_readback_source(crm: CrmSettings, http: httpx.AsyncClient) -> ReadBackSource | None:
    """The CRM's invoice list, or None when there is no CRM to read back."""
    if crm.mode is CrmMode.local:
        return None
    return OpenCrmReadBackSource.from_settings(_opencrm(crm), http)


def _opencrm(crm: CrmSettings) -> OpenCrmSettings:
    if crm.opencrm is None:  # CrmSettings refuses it
        raise ValueError("mode opencrm needs the opencrm settings")
    return crm.opencrm
