"""A fixed-size filter of our addresses' scripts, in front of the indexed script query.

A block has ~7,500 output scripts and almost none are ours; asking the unique index for all of
them costs the watcher tens of milliseconds a block at a million addresses. The filter answers
"certainly not ours" for nearly all of them from memory: one bit per script in a bitmap of
2^27 bits (16 MB, whatever the number of addresses, so the watcher's memory stays independent
of it), set at the script's bit index. At a million addresses about 0.75% of foreign scripts
hit a set bit; they, with ours, go to the query, which decides. No script of ours is ever
filtered out: a missed deposit would be lost.

The bit index is 27 bits of four bytes near the script's end (`script[-6:-2]`): inside the
hash for P2PKH, P2SH, P2WPKH, P2WSH and P2TR, and deterministic for any other script.

Built from a table kept in the database (a hand-written bitmap: a Bloom filter library would
hash with its own functions and hold its own state; this needs one bit array and one index).
Refreshed before each use with the rows added since (`id > floor`). On PostgreSQL ids are
given out before commit, so a row with a lower id can become visible after a higher one; the
floor therefore only advances to the highest id of an earlier refresh once every transaction
that had an id (xid) at the refresh after that has ended (`pg_snapshot_xmin`), and each
refresh reads both its rows and the snapshot in one REPEATABLE READ transaction. SQLite
commits writers one at a time, in id order: the floor is the highest id read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from custody.models import Address

BITS = 1 << 27
MASK = BITS - 1
READ_ROWS = 50_000  # rows fetched at a time while loading (bounds the memory of a load)


def bit_index(script: bytes) -> int:
    return int.from_bytes(script[-6:-2], "little") & MASK


@dataclass
class _Checkpoint:
    """A refresh on PostgreSQL: the next xid at its snapshot and the highest id it read."""

    xmax: int
    top: int


@dataclass
class ScriptFilter:
    """Our scripts' bits; `refresh` before `candidates`."""

    bits: bytearray = field(default_factory=lambda: bytearray(BITS // 8))
    floor: int = 0  # every address with id <= floor is in the bitmap
    seen_top: int = 0  # the highest id read
    checkpoints: list[_Checkpoint] = field(default_factory=list)

    def refresh(self, s: Session) -> int:
        """Add the addresses created since the last refresh; returns how many rows were read.
        `s` must not be in a transaction yet (this one is REPEATABLE READ on PostgreSQL)."""
        postgres = s.get_bind().dialect.name == "postgresql"
        if postgres:
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        read = 0
        top = self.seen_top
        bits = self.bits
        rows = s.execute(
            select(Address.id, Address.script_pubkey)
            .where(Address.id > self.floor)
            .order_by(Address.id)
            .execution_options(yield_per=READ_ROWS)
        )
        for address_id, script in rows:
            i = int.from_bytes(script[-6:-2], "little") & MASK
            bits[i >> 3] |= 1 << (i & 7)
            top = max(top, int(address_id))
            read += 1
        self.seen_top = top
        if not postgres:
            self.floor = top
            return read
        xmin, xmax = s.execute(
            text(
                "SELECT pg_snapshot_xmin(c)::text, pg_snapshot_xmax(c)::text "
                "FROM pg_current_snapshot() AS c"
            )
        ).one()
        s.rollback()
        self._advance(int(xmin), int(xmax), top)
        return read

    def _advance(self, xmin: int, xmax: int, top: int) -> None:
        """Raise the floor to the top of a checkpoint once every transaction that had an xid at
        the checkpoint after it has ended (a writer whose id was given just before a snapshot
        may get its xid just after it; by the next refresh it has one)."""
        self.checkpoints.append(_Checkpoint(xmax, top))
        while len(self.checkpoints) >= 2 and self.checkpoints[1].xmax <= xmin:
            self.floor = max(self.floor, self.checkpoints.pop(0).top)

    def candidates(self, scripts: list[bytes]) -> list[bytes]:
        """The scripts that may be ours (all of ours among them)."""
        bits = self.bits
        out = []
        for script in scripts:
            i = int.from_bytes(script[-6:-2], "little") & MASK
            if bits[i >> 3] >> (i & 7) & 1:
                out.append(script)
        return out
