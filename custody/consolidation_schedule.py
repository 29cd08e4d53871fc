"""Scheduled consolidation: the worker consolidates small hot coins while fees are cheap.

Off by default. With `[custody] consolidate_below_fee_rate = R` (sat/vB, 1 to the cold HSM's
consolidation ceiling `consolidation.MAX_FEE_RATE`), the worker asks the node's
`estimatesmartfee` (target `consolidate_conf_target`, default 144 blocks) at each new block;
when the estimate is at most R, every account with at least `consolidate_min_utxos` (default
100) spendable hot coins gets one `custody.consolidation.consolidate` of its
`consolidate_max_inputs` (default 50) smallest, at the estimated rate (at least 1 sat/vB).
A run happens at most once per `consolidate_every_blocks` (default 144) blocks: the height of
the last run is claimed in `service_state` by a compare-and-set, so several workers never
run it twice. Each consolidation is journalled (`consolidation`) and so is the run that
started it (`consolidation_scheduled`: the estimate, the threshold, the txid); an expensive
block is only logged. The cold HSM's checks are those of a manual consolidation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from cc_common.errors import ConfigError
from custody import consolidation, journal
from custody.balances import tip_height
from custody.chain.rpc import BitcoinRPC
from custody.db import rowcount, transaction
from custody.models import Account, AccountStatus, KeyValue, Utxo, Wallet

log = logging.getLogger(__name__)

LAST_RUN_KEY = "consolidation_schedule:last_height"


@dataclass(frozen=True)
class ScheduleSettings:
    """`[custody] consolidate_below_fee_rate` (0: off), `consolidate_min_utxos`,
    `consolidate_max_inputs`, `consolidate_every_blocks`, `consolidate_conf_target`."""

    below_fee_rate: float = 0.0
    min_utxos: int = 100
    max_inputs: int = 50
    every_blocks: int = 144
    conf_target: int = 144
    min_conf: int = 1

    @property
    def enabled(self) -> bool:
        return self.below_fee_rate > 0

    @classmethod
    def from_config(cls, config: Config) -> ScheduleSettings:
        s = config.section("custody")
        d = cls()
        out = cls(
            below_fee_rate=s.float("consolidate_below_fee_rate", d.below_fee_rate),
            min_utxos=s.int("consolidate_min_utxos", d.min_utxos),
            max_inputs=s.int("consolidate_max_inputs", d.max_inputs),
            every_blocks=s.int("consolidate_every_blocks", d.every_blocks),
            conf_target=s.int("consolidate_conf_target", d.conf_target),
            min_conf=s.int("send_min_conf", d.min_conf),
        )
        ceiling = consolidation.MAX_FEE_RATE
        if out.enabled and not 1 <= out.below_fee_rate <= ceiling:
            raise ConfigError(
                f"[custody] consolidate_below_fee_rate must be 0 (off) or 1-{ceiling:g} sat/vB "
                f"(the cold HSM's consolidation ceiling), got {out.below_fee_rate:g}"
            )
        if not 2 <= out.max_inputs <= 200:
            raise ConfigError(
                f"[custody] consolidate_max_inputs must be 2-200, got {out.max_inputs}"
            )
        if out.min_utxos < 2:
            raise ConfigError(f"[custody] consolidate_min_utxos must be >= 2, got {out.min_utxos}")
        if out.every_blocks < 1 or out.conf_target < 1:
            raise ConfigError(
                "[custody] consolidate_every_blocks and consolidate_conf_target must be >= 1"
            )
        return out


class ConsolidationSchedule:
    """Called by the worker loop; does nothing unless enabled, due and cheap."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        rpc: BitcoinRPC,
        hsm: Any,
        settings: ScheduleSettings,
    ) -> None:
        self.factory, self.rpc, self.hsm, self.settings = factory, rpc, hsm, settings
        self._checked_tip: int | None = None

    def step(self) -> list[consolidation.Consolidated]:
        """One check: the consolidations made (none when off, not due, or expensive)."""
        if not self.settings.enabled:
            return []
        with self.factory() as s:
            tip = tip_height(s)
            row = s.get(KeyValue, LAST_RUN_KEY)
            last = int(row.value) if row is not None else None
        if tip is None or tip == self._checked_tip:
            return []  # the estimate is asked once per block
        self._checked_tip = tip
        if last is not None and tip - last < self.settings.every_blocks:
            return []
        estimate = self.rpc.estimate_smart_fee(self.settings.conf_target).sat_per_vbyte
        if estimate is None or estimate > self.settings.below_fee_rate:
            log.info(
                "consolidation schedule: fee estimate %s sat/vB is above %g: not now",
                "unknown" if estimate is None else f"{estimate:.2f}",
                self.settings.below_fee_rate,
            )
            return []
        if not self._claim(tip, last):
            return []  # another worker runs it for this block
        rate = max(1.0, min(float(estimate), self.settings.below_fee_rate))
        done = []
        for account_id in self._accounts():
            try:
                result = consolidation.consolidate(
                    self.factory,
                    self.rpc,
                    self.hsm,
                    account_id,
                    max_inputs=self.settings.max_inputs,
                    fee_rate=rate,
                    min_conf=self.settings.min_conf,
                )
            except consolidation.ConsolidationRefused as exc:
                log.warning("consolidation schedule: account %d: %s", account_id, exc.message)
                continue
            with transaction(self.factory) as s:
                journal.append(
                    s,
                    journal.JournalKind.CONSOLIDATION_SCHEDULED,
                    account_id,
                    {
                        "txid": result.txid,
                        "height": tip,
                        "fee_estimate": round(float(estimate), 3),
                        "below_fee_rate": self.settings.below_fee_rate,
                        "fee_rate": rate,
                    },
                )
            done.append(result)
        return done

    def _claim(self, tip: int, last: int | None) -> bool:
        """Record `tip` as the last run, if no other worker changed it since we read `last`."""
        try:
            with transaction(self.factory) as s:
                if last is None:
                    s.add(KeyValue(key=LAST_RUN_KEY, value=str(tip)))
                    return True
                res = s.execute(
                    update(KeyValue)
                    .where(KeyValue.key == LAST_RUN_KEY, KeyValue.value == str(last))
                    .values(value=str(tip))
                )
                return rowcount(res) == 1
        except IntegrityError:
            return False

    def _accounts(self) -> list[int]:
        """Active accounts with at least `min_utxos` hot coins a consolidation may take."""
        with self.factory() as s:
            tip = tip_height(s)
            if tip is None:
                return []
            rows = s.execute(
                select(Utxo.account_id)
                .join(Account, Account.id == Utxo.account_id)
                .where(
                    Account.status == AccountStatus.ACTIVE,
                    Utxo.wallet == Wallet.HOT,
                    Utxo.block_height.is_not(None),
                    Utxo.block_height <= tip - max(self.settings.min_conf, 1) + 1,
                    Utxo.spent_by.is_(None),
                    Utxo.reserved_by_send.is_(None),
                    Utxo.is_dust.is_(False),
                )
                .group_by(Utxo.account_id)
                .having(func.count() >= self.settings.min_utxos)
                .order_by(Utxo.account_id)
            ).scalars()
            return list(rows)
