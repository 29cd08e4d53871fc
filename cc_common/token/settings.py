"""Where a token is and how to log in, read from an `[hsm_hot]` or `[hsm_cold]` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cc_common.config import Section
from cc_common.errors import ConfigError

DEFAULT_PIN_RETRY_LIMIT = 5


@dataclass(frozen=True)
class TokenSettings:
    """One HSM's token. PINs are kept out of `repr` so a logged settings object leaks nothing.

    `softhsm_conf` and `token_dir` are None for a real (non-SoftHSM) PKCS#11 module.
    """

    module_path: Path
    label: str
    so_pin: str = field(repr=False)
    user_pin: str = field(repr=False)
    pin_retry_limit: int
    pin_state_path: Path
    softhsm_conf: Path | None = None
    token_dir: Path | None = None

    @classmethod
    def from_section(cls, section: Section) -> TokenSettings:
        """Keys: pkcs11_module, token_label, so_pin, user_pin, pin_retry_limit, and for
        SoftHSM softhsm_conf + token_dir; optional pin_state (default: next to token_dir)."""
        softhsm_conf = section.path("softhsm_conf") if section.has("softhsm_conf") else None
        token_dir = section.path("token_dir") if section.has("token_dir") else None
        if (softhsm_conf is None) != (token_dir is None):
            raise ConfigError(f"config: [{section.name}] needs both softhsm_conf and token_dir")
        label = section.str("token_label")
        if section.has("pin_state"):
            pin_state = section.path("pin_state")
        elif token_dir is not None:
            pin_state = token_dir.parent / f"{label}.pin-retry.json"
        else:
            raise ConfigError(f"config: [{section.name}] pin_state is missing")
        limit = section.int("pin_retry_limit", DEFAULT_PIN_RETRY_LIMIT)
        if limit < 1:
            raise ConfigError(f"config: [{section.name}] pin_retry_limit must be at least 1")
        return cls(
            module_path=Path(section.str("pkcs11_module")),
            label=label,
            so_pin=section.secret("so_pin"),
            user_pin=section.secret("user_pin"),
            pin_retry_limit=limit,
            pin_state_path=pin_state,
            softhsm_conf=softhsm_conf,
            token_dir=token_dir,
        )
