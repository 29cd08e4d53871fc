"""Write a complete, working configuration for a local deployment (`custody init`).

Every secret and PIN is generated here with `secrets`; nothing secret is baked into code.
Ports are picked free on loopback at init time, below the kernel's ephemeral range, so several
deployments (tests, demo) can run side by side in their own data directories.

The configuration is split by machine role (`cc_common.roles`): each `<role>.toml` holds all
that role's process reads and nothing else, secrets included; the supervisor's map
`chaincloud.toml` holds every process's addresses and settings but no secret. Every file is
created 0600 (never widened and then narrowed), the directories 0700. `write_settings` changes
a setting everywhere it is held, so a test, the demo or an operator reaches the process that
reads it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import tomli_w

from cc_common.config import ALL_ROLES, CONFIG_FILENAME, ROLES, Config, load_config, role_path_for
from cc_common.config_write import write_private
from cc_common.errors import ConfigError
from cc_common.in_use import refuse_if_in_use
from cc_common.network_config import apply_network
from cc_common.ports import PortPicker
from cc_common.roles import role_part, without_secrets
from wallet_core.networks import Network

SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)

# Phone numbers of the simulated world (E.164). The cold HSM has two SIMs on two carriers.
COLD_NUMBERS = ("+15550000001", "+15550000002")
VDEVICE_NUMBER = "+15550000100"
OWNER_NUMBER = "+15550000200"
OPERATOR_NUMBER = "+15550001000"
TWILIO_FROM_NUMBER = "+15550009999"


HEADER = "# ChainCloud custody: local deployment written by `custody init`.\n"
_PICKER = PortPicker()


def free_port() -> int:
    """A TCP port free on loopback right now, below the kernel's ephemeral range (a port in
    that range can be taken by any outgoing connection before the service binds it)."""
    return _PICKER()


def find_softhsm_module() -> str:
    for candidate in SOFTHSM_MODULE_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return SOFTHSM_MODULE_CANDIDATES[0]


def _pin() -> str:
    return secrets.token_hex(8)


def generate_config(data_dir: Path) -> dict[str, Any]:
    """The configuration of a fresh local deployment in `data_dir`, with new secrets."""
    twilio_sid = "AC" + secrets.token_hex(16)
    twilio_token = secrets.token_hex(16)
    twilio_port = free_port()
    node_port = free_port()
    node_user = "cc-" + secrets.token_hex(4)
    node_password = secrets.token_urlsafe(24)
    module = find_softhsm_module()
    custody_port = free_port()
    return {
        "deployment": {"name": "local", "network": "regtest"},
        "phones": {"operator": OPERATOR_NUMBER, "owner": OWNER_NUMBER},
        "serial": {
            "hot_port": "dev/serial-hot",
            "cold_port": "dev/serial-cold",
            "baud": 115200,
        },
        "firmware_sim": {
            "control_socket": "run/firmware-sim.sock",
            "serial": {
                "hot_link": "dev/serial-hot",
                "cold_link": "dev/serial-cold",
                "baud": 115200,
            },
            "carrier": {"delay_ms": 20, "loss": 0.0, "duplicate": 0.0, "log": "logs/carrier.jsonl"},
            "modems": [
                {
                    "name": "cold-a",
                    "number": COLD_NUMBERS[0],
                    "carrier": "alpha",
                    "link": "dev/modem-cold-a",
                },
                {
                    "name": "cold-b",
                    "number": COLD_NUMBERS[1],
                    "carrier": "beta",
                    "link": "dev/modem-cold-b",
                },
                {
                    "name": "vdevice",
                    "number": VDEVICE_NUMBER,
                    "carrier": "gamma",
                    "link": "dev/modem-vdevice",
                },
            ],
            "phones": {"numbers": [OPERATOR_NUMBER, OWNER_NUMBER]},
            "twilio_gateway": {
                "host": "127.0.0.1",
                "port": twilio_port,
                "account_sid": twilio_sid,
                "auth_token": twilio_token,
                "numbers": [TWILIO_FROM_NUMBER],
            },
            "node": {
                "host": "127.0.0.1",
                "port": node_port,
                "datadir": "node",
                "rpc_user": node_user,
                "rpc_password": node_password,
                "txindex": False,  # as Bitcoin Core's default
            },
        },
        "twilio": {
            "account_sid": twilio_sid,
            "auth_token": twilio_token,
            "from_number": TWILIO_FROM_NUMBER,
            "base_url": f"http://127.0.0.1:{twilio_port}",
        },
        "node": {
            "rpc_url": f"http://127.0.0.1:{node_port}",
            "rpc_user": node_user,
            "rpc_password": node_password,
            "timeout": 30.0,
        },
        "hsm_hot": {
            "pkcs11_module": module,
            "softhsm_conf": "hsm-hot/softhsm2.conf",
            "token_dir": "hsm-hot/tokens",
            "token_label": "hsm-hot",
            "so_pin": _pin(),
            "user_pin": _pin(),
            "pin_retry_limit": 5,
            "rpc_host": "127.0.0.1",
            "rpc_port": free_port(),
            "rpc_secret": secrets.token_hex(32),
            "state_dir": "hsm-hot/state",
            "pairing_file": "hsm-cold/pairing.bin",
            "link_timeout": 20.0,
            "max_send_sat": 1_000_000_000,
            "max_daily_sat": 5_000_000_000,
            "max_outputs": 20,
            "max_requests_per_minute": 600,
        },
        "hsm_cold": {
            "pkcs11_module": module,
            "softhsm_conf": "hsm-cold/softhsm2.conf",
            "token_dir": "hsm-cold/tokens",
            "token_label": "hsm-cold",
            "so_pin": _pin(),
            "user_pin": _pin(),
            "pin_retry_limit": 5,
            "state_dir": "hsm-cold/state",
            "pairing_file": "hsm-cold/pairing.bin",
            "export_dir": "hsm-cold/offline-export",
            # Backup key: M-of-N SLIP-39 shares (docs/recovery.md). The local deployment is a
            # drill: `hsm-cold init` writes the shares to files here instead of the console.
            # A production cold HSM leaves backup_drill_dir out.
            "backup_threshold": 2,
            "backup_shares": 3,
            "backup_drill_dir": "hsm-cold/DRILL-shares",
            "max_fee_sat": 1_000_000,
            "max_fee_rate": 500,
            "max_fee_per_day_sat": 10_000_000,
            "modem_ports": ["dev/modem-cold-a", "dev/modem-cold-b"],
            "numbers": list(COLD_NUMBERS),
            # SMS channel (docs/sms-channel.md): renewal period and QH time window (seconds)
            "channel_lifetime": 86_400,
            "channel_freshness": 600,
            "accept_plain_channel_open": False,  # the reference's unsigned forms: spoofable
            "sms_poll_interval": 1.0,
            "min_loosen_delay": 10,  # the shortest loosening delay a policy may have
        },
        "custody": {
            "database_url": f"sqlite:///{data_dir / 'custody.db'}",
            "secret_key": secrets.token_hex(32),
            "host": "127.0.0.1",
            "port": custody_port,
        },
        # The operator console (`custody dashboard`): loopback only; its own token.
        "operator": {
            "host": "127.0.0.1",
            "port": free_port(),
            "token": secrets.token_urlsafe(32),
            "refresh_seconds": 2.0,
            "stuck_send_seconds": 600,
            "watcher_lag_blocks": 3,
        },
        "vdevice": {
            "modem_port": "dev/modem-vdevice",
            "number": VDEVICE_NUMBER,
            "state_dir": "vdevice",
            # The merchant site's section-2 API; "" = [merchant_site] host:port + /api/v1/open.
            "merchant_url": "",
            # X-VDevice-Token for the site and the vtest password; "" = [merchant_site]'s.
            "merchant_token": "",
            "vtest_password": "",
            "owner_number": OWNER_NUMBER,
            "poll_interval": 2.0,
            # The demo starts every process before the account exists: wait for provisioning.
            "wait_for_provisioning": True,
            "channel_renew_before": 3600,
            "channel_max_lifetime": 172800,
            "sms_reply_timeout": 60.0,
            "sms_max_attempts": 4,
            "stall_retry": 300.0,
            # The spending policy is [vdevice.policy] (absent: the documented defaults, the
            # same as the cold HSM's [hsm_cold.policy]); see docs/threat-model.md.
            "approval_timeout": 3600.0,
            # sends handled at once, so custody can batch them (vdevice/README.md)
            "max_in_flight": 4,
            "low_balance_sat": 100_000,
        },
        "merchant_site": {
            "host": "127.0.0.1",
            "port": free_port(),
            "vtest_password": secrets.token_urlsafe(12),
            "database_url": f"sqlite:///{data_dir / 'merchant.db'}",
            "custody_url": f"http://127.0.0.1:{custody_port}",
            # Shared with the V-device, sent in the X-VDevice-Token header ("" = no check).
            "vdevice_token": secrets.token_hex(24),
            # Demo switch: accept unencrypted raw_vtest_info (plays a hacked site).
            "allow_raw_vtest": False,
        },
    }


def init_deployment(
    data_dir: Path, *, force: bool = False, network: Network = Network.REGTEST
) -> Config:
    """Create `data_dir` (0700) with its sub-directories, the map and one file per role."""
    data_dir = data_dir.resolve()
    path = data_dir / CONFIG_FILENAME
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; use --force to overwrite it (new secrets)")
    if path.exists():
        refuse_if_in_use(load_config(data_dir, environ={}, role=ALL_ROLES))
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for sub in ("logs", "run", "dev", "hsm-hot", "hsm-cold", "node", "vdevice"):
        (data_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = apply_network(generate_config(data_dir), network)
    site = raw["merchant_site"]  # the phone gets its own copy of what it shares with the site
    raw["vdevice"]["vtest_password"] = site["vtest_password"]
    raw["vdevice"]["merchant_token"] = site["vdevice_token"]
    write_private(
        path,
        HEADER
        + "# The supervisor's map of every process: no secret here. Each process reads only\n"
        + "# its own <role>.toml; change a setting with `custody config set`.\n"
        + tomli_w.dumps(without_secrets(raw)),
    )
    for role in ROLES:
        write_private(
            role_path_for(data_dir, role),
            HEADER
            + f"# All that the {role} process reads, its secrets included: keep it on that\n"
            + "# machine alone, mode 0600.\n"
            + tomli_w.dumps(role_part(raw, role)),
        )
    return load_config(data_dir, environ={}, role=ALL_ROLES)
