"""The V-device's configuration (`[vdevice]`), read once and passed down.

In the local deployment the merchant site's URL, its shared header token and the vtest
password are left empty under `[vdevice]` and taken from `[merchant_site]`, so the one secret
lives in one place. A real phone has its own values here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cc_common.config import Config
from cc_common.errors import ConfigError
from cc_common.spending_policy import DEFAULT_POLICY, PolicyFormatError, SpendingPolicy
from wallet_core.networks import Network

API_PREFIX = "/api/v1/open"
DB_FILENAME = "vdevice.db"
STATUS_FILENAME = "vdevice-status.json"


# Keys that were local limits with 0 = "no limit"; the policy is now `[vdevice.policy]`.
RETIRED_POLICY_KEYS = ("whitelist", "max_send_sat", "max_daily_sat", "max_sends_per_hour")
DEFAULT_APPROVAL_TIMEOUT = 3600.0
DEFAULT_MAX_IN_FLIGHT = 4
MAX_IN_FLIGHT = 50  # the merchant site's MAX_SKIP covers this plus the held sends


@dataclass(frozen=True)
class Policies:
    """The spending policy applied on the phone (the same as the cold HSM's: see
    `cc_common.spending_policy`; it has no "no limit") and the low-balance alert (0 = off)."""

    spending: SpendingPolicy = DEFAULT_POLICY
    low_balance_sat: int = 0

    def as_dict(self) -> dict[str, object]:
        p = self.spending
        return {
            "whitelist": list(p.whitelist),
            "max_send_sat": p.max_send_sat,
            "max_daily_sat": p.max_daily_sat,
            "max_sends_per_hour": p.max_sends_per_hour,
            "approval_above_sat": p.approval_above_sat,
            "approve_new_destinations": p.approve_new_destinations,
            "loosen_delay": p.loosen_delay,
            "low_balance_sat": self.low_balance_sat,
        }


@dataclass(frozen=True)
class Settings:
    """Everything `vdevice run` needs from the configuration file."""

    state_dir: Path
    run_dir: Path
    log_dir: Path
    modem_port: str
    number: str
    owner_number: str
    network: Network
    merchant_url: str
    merchant_token: str
    vtest_password: str
    poll_interval: float = 2.0
    wait_for_provisioning: bool = False
    channel_renew_before: float = 3600.0
    channel_max_lifetime: float = 172800.0
    sms_reply_timeout: float = 60.0
    sms_max_attempts: int = 4
    stall_retry: float = 300.0
    http_timeout: float = 10.0
    tx_poll_max_interval: float = 60.0
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    policies: Policies = Policies()

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_FILENAME

    @property
    def status_path(self) -> Path:
        return self.run_dir / STATUS_FILENAME


def state_dir(config: Config) -> Path:
    return config.section("vdevice").path("state_dir")


def owner_code_period(config: Config) -> int:
    """`[vdevice] owner_code_period`: seconds per owner code (default 30, the apps' standard)."""
    period = config.section("vdevice").int("owner_code_period", 30)
    if not 5 <= period <= 120:
        raise ConfigError(
            f"config: [vdevice] owner_code_period must be 5 to 120 seconds, not {period}"
        )
    return period


def load_settings(config: Config) -> Settings:
    """`[vdevice]`, with the local deployment's fall-backs to `[merchant_site]`."""
    v = config.section("vdevice")
    site = config.section("merchant_site") if config.has_section("merchant_site") else None
    merchant_url = v.str("merchant_url", "")
    if not merchant_url:
        if site is None:
            raise ConfigError("config: [vdevice] merchant_url is missing")
        merchant_url = f"http://{site.str('host')}:{site.int('port')}{API_PREFIX}"
    token = v.str("merchant_token", "")
    if not token and site is not None:
        token = site.str("vdevice_token", "")
    password = v.str("vtest_password", "")
    if not password:
        if site is None:
            raise ConfigError("config: [vdevice] vtest_password is missing")
        password = site.secret("vtest_password")
    owner = v.str("owner_number", "")
    if not owner:
        owner = config.section("phones").str("owner")
    network = Network.from_name(config.section("deployment").str("network", "regtest"))
    policies = Policies(
        spending=spending_policy(config), low_balance_sat=v.int("low_balance_sat", 0)
    )
    settings = Settings(
        state_dir=v.path("state_dir"),
        run_dir=config.run_dir,
        log_dir=config.log_dir,
        modem_port=v.port_url("modem_port"),
        number=v.str("number"),
        owner_number=owner,
        network=network,
        merchant_url=merchant_url.rstrip("/"),
        merchant_token=token,
        vtest_password=password,
        poll_interval=v.float("poll_interval", 2.0),
        wait_for_provisioning=v.bool("wait_for_provisioning", False),
        channel_renew_before=v.float("channel_renew_before", 3600.0),
        channel_max_lifetime=v.float("channel_max_lifetime", 172800.0),
        sms_reply_timeout=v.float("sms_reply_timeout", 60.0),
        sms_max_attempts=v.int("sms_max_attempts", 4),
        stall_retry=v.float("stall_retry", 300.0),
        http_timeout=v.float("http_timeout", 10.0),
        tx_poll_max_interval=v.float("tx_poll_max_interval", 60.0),
        approval_timeout=v.float("approval_timeout", DEFAULT_APPROVAL_TIMEOUT),
        max_in_flight=v.int("max_in_flight", DEFAULT_MAX_IN_FLIGHT),
        policies=policies,
    )
    _check(settings)
    return settings


def spending_policy(config: Config) -> SpendingPolicy:
    """`[vdevice.policy]` over the documented defaults: the policy the phone starts with,
    the same as the cold HSM's when both keep the defaults."""
    v = config.section("vdevice")
    retired = [k for k in RETIRED_POLICY_KEYS if v.has(k)]
    if retired:
        raise ConfigError(
            f"config: [vdevice] {', '.join(retired)}: the spending policy is now [vdevice.policy]"
            " (max_send_sat, max_daily_sat, max_sends_per_hour, approval_above_sat,"
            " approve_new_destinations, whitelist, loosen_delay); there is no 0 = no limit"
        )
    if not config.has_section("vdevice.policy"):
        return DEFAULT_POLICY
    try:
        return SpendingPolicy.from_mapping(config.section("vdevice.policy").values, DEFAULT_POLICY)
    except (PolicyFormatError, TypeError) as exc:
        raise ConfigError(f"config: [vdevice.policy]: {exc}") from None


def _check(s: Settings) -> None:
    for name in (
        "poll_interval",
        "sms_reply_timeout",
        "stall_retry",
        "http_timeout",
        "approval_timeout",
    ):
        if getattr(s, name) <= 0:
            raise ConfigError(f"config: [vdevice] {name} must be positive")
    if s.sms_max_attempts < 1:
        raise ConfigError("config: [vdevice] sms_max_attempts must be at least 1")
    if not 1 <= s.max_in_flight <= MAX_IN_FLIGHT:
        raise ConfigError(
            f"config: [vdevice] max_in_flight must be 1 to {MAX_IN_FLIGHT}, not {s.max_in_flight}"
        )
    if s.policies.low_balance_sat < 0:
        raise ConfigError("config: [vdevice] low_balance_sat must not be negative")
