"""The token of one HSM process, opened from its configuration section in one call.

    token = HsmToken.open(config.section("hsm_hot"))
    pub = token.keys.generate_signing_key("hot/42")
    der = token.keys.sign_digest("hot/42", sighash)

`init` (for `hsm-hot init` / `hsm-cold init`) creates the SoftHSM token idempotently;
`reset_pin_lock` is the operator's unlock after the retry limit, checked by an SO login.
"""

from __future__ import annotations

from typing import Any

from cc_common.config import Section
from cc_common.token.aes_keys import AesKeys
from cc_common.token.ec_keys import EcKeys
from cc_common.token.errors import TokenError
from cc_common.token.pin_guard import PinState
from cc_common.token.session import TokenSession, pin_guard, reset_pin_lock
from cc_common.token.settings import TokenSettings
from cc_common.token.softhsm import init_softhsm_token
from cc_common.token.types import Provisioned


class HsmToken:
    """A logged-in token with its signing keys (`keys`) and sealing keys (`seals`)."""

    def __init__(self, session: TokenSession) -> None:
        self.session = session
        self.keys = EcKeys(session)
        self.seals = AesKeys(session)

    @staticmethod
    def settings(section: Section) -> TokenSettings:
        return TokenSettings.from_section(section)

    @classmethod
    def init(cls, section: Section) -> Provisioned:
        """Create this HSM's SoftHSM token (own conf, own directory); no-op if it exists."""
        s = TokenSettings.from_section(section)
        if s.softhsm_conf is None or s.token_dir is None:
            raise TokenError(f"[{section.name}] has no SoftHSM store; init the token by hand")
        return init_softhsm_token(
            s.module_path, s.softhsm_conf, s.token_dir, s.label, s.so_pin, s.user_pin
        )

    @classmethod
    def open(cls, section: Section) -> HsmToken:
        """Log in to this HSM's token (user PIN, under the retry limit)."""
        return cls(TokenSession.open(TokenSettings.from_section(section)))

    @staticmethod
    def reset_pin_lock(section: Section, so_pin: str) -> None:
        """Operator unlock, verified by an SO login with the SO PIN the operator gives.

        The PIN is an explicit argument (a CLI prompts for it) so that an unlock is always a
        deliberate operator action, never something a running HSM does to itself.
        """
        reset_pin_lock(TokenSettings.from_section(section), so_pin)

    @staticmethod
    def pin_state(section: Section) -> PinState:
        return pin_guard(TokenSettings.from_section(section)).read()

    def status(self, section: Section) -> dict[str, Any]:
        """For the operator console: does the token still answer (one random draw through the
        open session), and how many user-PIN tries are left before the retry lock."""
        try:
            self.session.random_bytes(1)
            present = True
        except TokenError:
            present = False
        guard = pin_guard(TokenSettings.from_section(section))
        return {
            "token_present": present,
            "pin_tries_left": guard.limit - guard.read().user_failures,
        }

    @property
    def label(self) -> str:
        return self.session.label

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HsmToken:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
