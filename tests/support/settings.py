"""The settings of a test app: the test keys and webhook secret, the worker off."""

from __future__ import annotations

import json

from service.settings import Settings, load_settings
from tests.support.keys import API_KEYS
from tests.support.webhooks import TEST_SECRET


def make_settings(database_url: str, **overrides: object) -> Settings:
    """Settings on `database_url`; `overrides` as keyword arguments of `load_settings`."""
    values: dict[str, object] = {
        "database_url": database_url,
        "api_keys": json.dumps(API_KEYS),
        "webhook_secrets": TEST_SECRET,
        "run_worker": False,
        "log_format": "console",
        "db_pool_size": 5,
    }
    values.update(overrides)
    return load_settings(**values)
