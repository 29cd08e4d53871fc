"""Full URLs that `custody init` builds from a host and a port of another table.

`[merchant_site] custody_url` is `http://<[custody] host>:<[custody] port>`, and so on: the
URL is a copy, read by another process from its own file, so a port changed alone would
leave that process calling the old one. `follow_urls` gives the URL changes that go with a
host or port change (`custody config set`), and says which URLs it left alone because they
point somewhere else (set by hand: a node or a gateway on another machine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# (table, key of a host or port) -> the (table, key) of the URLs built from it
URL_SOURCES: Mapping[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("custody", "host"): (("merchant_site", "custody_url"),),
    ("custody", "port"): (("merchant_site", "custody_url"),),
    ("merchant_site", "host"): (("vdevice", "merchant_url"),),
    ("merchant_site", "port"): (("vdevice", "merchant_url"),),
    ("firmware_sim.twilio_gateway", "host"): (("twilio", "base_url"),),
    ("firmware_sim.twilio_gateway", "port"): (("twilio", "base_url"),),
    ("firmware_sim.node", "host"): (("node", "rpc_url"),),
    ("firmware_sim.node", "port"): (("node", "rpc_url"),),
}


def _lookup(raw: Mapping[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _moved(url: str, was: tuple[Any, Any], now: tuple[Any, Any]) -> str | None:
    """`url` moved from host and port `was` to `now`; None if it does not point at `was`."""
    split = urlsplit(url)
    try:
        if (split.hostname, split.port) != (str(was[0]), was[1]):
            return None
    except ValueError:  # not a port number: not built from one
        return None
    host, port = str(now[0]), int(now[1])
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(split._replace(netloc=netloc))


def follow_urls(
    raw: Mapping[str, Any], section: str, key: str, new: Any
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The URL settings to change with `[section] key` = `new` (`raw`: every role's
    configuration as it is now), and a note for each URL built from it that is left alone."""
    changes: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    old = _lookup(raw, f"{section}.{key}")
    if old is None or old == new:
        return changes, notes
    was = (_lookup(raw, f"{section}.host"), _lookup(raw, f"{section}.port"))
    now = (new, was[1]) if key == "host" else (was[0], new)
    for table, url_key in URL_SOURCES.get((section, key), ()):
        url = _lookup(raw, f"{table}.{url_key}")
        if not isinstance(url, str) or not url:
            continue  # "" = built from [section] when the process starts
        moved = _moved(url, was, now) if None not in was else None
        if moved is None:
            notes.append(
                f"[{table}] {url_key} ({url}) does not point at [{section}]'s old address: "
                "left as is; "
                f"set it too if it should follow (`custody config set {table}.{url_key} URL`)"
            )
        else:
            changes.setdefault(table, {})[url_key] = moved
    return changes, notes
