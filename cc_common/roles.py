"""What each machine role's configuration file holds, and which keys are secrets.

A process started as a role reads `<data>/<role>.toml` alone (`cc_common.config`), so that
file must hold everything the process needs: its own tables whole, plus the few keys of a
peer's table it uses to reach that peer (an address, a port, the secret of the link the two
share). Nothing else: the hot HSM's file never names the cold HSM's PIN, custody's never the
site's vtest password. `ROLE_SECRETS` lists the secrets, which the supervisor's map
(`chaincloud.toml`) never holds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

WHOLE = None  # the whole table, nested tables included

# role -> {top-level table: WHOLE, or the keys of that table the role needs}
ROLE_TABLES: Mapping[str, Mapping[str, tuple[str, ...] | None]] = {
    "custody": {
        "deployment": WHOLE,
        "logging": WHOLE,
        "custody": WHOLE,
        "operator": WHOLE,  # the operator console (`custody dashboard`) runs as custody
        "node": WHOLE,
        "twilio": WHOLE,
        "phones": ("operator",),
        "hsm_hot": ("rpc_host", "rpc_port", "rpc_secret", "rpc_timeout", "api_hsm_timeout"),
        "hsm_cold": ("numbers",),  # printed in the V-device's provisioning bundle
    },
    "hsm-hot": {
        "deployment": WHOLE,
        "logging": WHOLE,
        "hsm_hot": WHOLE,
        "serial": ("hot_port", "baud"),
    },
    "hsm-cold": {
        "deployment": WHOLE,
        "logging": WHOLE,
        "hsm_cold": WHOLE,
        "serial": ("cold_port", "baud"),
        "phones": ("operator",),
    },
    "vdevice": {
        "deployment": WHOLE,
        "logging": WHOLE,
        "vdevice": WHOLE,
        "phones": ("owner",),
        "merchant_site": ("host", "port"),  # where it polls, when [vdevice] merchant_url is ""
    },
    "merchant-site": {
        "deployment": WHOLE,
        "logging": WHOLE,
        "merchant_site": WHOLE,
        "custody": ("host", "port"),  # the API, when [merchant_site] custody_url is ""
    },
    "firmware-sim": {
        "deployment": WHOLE,
        "logging": WHOLE,
        "firmware_sim": WHOLE,
    },
}

# Tables that only the supervisor reads (`custody up`): in the map, in no role's file.
SUPERVISOR_TABLES = ("supervisor",)
KNOWN_TABLES = frozenset(t for tables in ROLE_TABLES.values() for t in tables) | frozenset(
    SUPERVISOR_TABLES
)

# Which role holds which secret (table path, key). A secret two roles share (the hot HSM's RPC
# secret: custody and the hot HSM; the vtest password and the site's header token: the site
# and the phone, each under its own table) is in both of their files and no other.
ROLE_SECRETS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "custody": (
        ("custody", "secret_key"),
        ("custody", "database_url"),
        ("operator", "token"),  # the operator console's (`custody dashboard`)
        ("hsm_hot", "rpc_secret"),
        ("twilio", "account_sid"),
        ("twilio", "auth_token"),
        ("node", "rpc_user"),
        ("node", "rpc_password"),
    ),
    "hsm-hot": (("hsm_hot", "so_pin"), ("hsm_hot", "user_pin"), ("hsm_hot", "rpc_secret")),
    "hsm-cold": (("hsm_cold", "so_pin"), ("hsm_cold", "user_pin")),
    "vdevice": (("vdevice", "vtest_password"), ("vdevice", "merchant_token")),
    "merchant-site": (
        ("merchant_site", "vtest_password"),
        ("merchant_site", "vdevice_token"),
        ("merchant_site", "database_url"),
    ),
    "firmware-sim": (
        ("firmware_sim.twilio_gateway", "account_sid"),
        ("firmware_sim.twilio_gateway", "auth_token"),
        ("firmware_sim.node", "rpc_user"),
        ("firmware_sim.node", "rpc_password"),
    ),
}
SECRET_KEYS = frozenset(pair for pairs in ROLE_SECRETS.values() for pair in pairs)


def role_part(raw: Mapping[str, Any], role: str) -> dict[str, Any]:
    """The tables and keys of `raw` (a whole configuration, or changes to one) that `role`'s
    file holds; a copy, so writing it never changes `raw`."""
    out: dict[str, Any] = {}
    for table, keys in ROLE_TABLES[role].items():
        value = raw.get(table)
        if not isinstance(value, Mapping):
            continue
        if keys is WHOLE:
            out[table] = copy.deepcopy(dict(value))
        else:
            picked = {k: copy.deepcopy(value[k]) for k in keys if k in value}
            if picked:
                out[table] = picked
    return out


def without_secrets(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy of `raw` without any key of `SECRET_KEYS` (the supervisor's map)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out[key] = without_secrets(value, f"{prefix}{key}.")
        elif (prefix.rstrip("."), key) not in SECRET_KEYS:
            out[key] = copy.deepcopy(value)
    return out
