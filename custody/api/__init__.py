"""Blueprints of the custody API, one per resource (reference section 1 and our extensions)."""

from __future__ import annotations

from datetime import datetime


def iso(at: datetime | None) -> str | None:
    """ISO-8601 without timezone and without fractions, as the reference shows it (UTC)."""
    return None if at is None else at.replace(microsecond=0).isoformat()
