"""WSGI entry point: `custody.wsgi:app` (gunicorn), or `create()` for a factory.

The data directory comes from `CC_DATA_DIR` (set by `custody serve --dir`, or by the
supervisor), read here once at the process edge; everything below gets the `Config` object.
"""

from __future__ import annotations

from flask import Flask

from cc_common.config import load_config
from custody.app import create_app


def create() -> Flask:
    """Build the app from the deployment in `$CC_DATA_DIR` (or ./data)."""
    return create_app(load_config(role="custody"))


def __getattr__(name: str) -> Flask:
    # `custody.wsgi:app` builds the app on first access, not at import time.
    if name == "app":
        application = create()
        globals()["app"] = application
        return application
    raise AttributeError(name)
