"""Fixed-size filters of what the watcher matches blocks against, in front of its queries.

A block has ~7,500 output scripts, ~2,500 spent outpoints and ~2,500 txids, and almost none
concern an account; asking the indexes for all of them costs the watcher tens of milliseconds
a block at a million addresses. A filter answers "certainly not ours" for nearly all of them
from memory: one bit per key in a bitmap of 2^27 bits (16 MB, whatever the number of rows, so
the watcher's memory stays independent of the number of addresses). At a million addresses
about 0.75% of foreign scripts hit a set bit; they, with ours, go to the query, which decides.
No key of ours is ever filtered out: a missed deposit would be lost.

A key's bit is 27 bits of Python's own hash of it (`hash`, computed in C and cached by each
bytes and str object): its seed differs between processes, which does not matter to a filter
that lives and is loaded in one process.

Hand-written (a Bloom filter library would hash with its own functions and keep its own
state; this is one bit array and one index). Bits are set by `custody.chain._blockscan.mark`
(a million keys: ~0.7 s of Python, milliseconds in C), and the same C module scans raw blocks
through the bitmaps with the same hash (`custody.chain.rawblock.scan_block`).

Each filter is loaded from its tables and refreshed before each use with the rows added since
(`id > floor`). On PostgreSQL ids are given out before commit, so a row with a lower id can
become visible after a higher one; the floor therefore only advances to the highest id an
earlier refresh read once every transaction that had an xid at the refresh after that one has
ended (`pg_snapshot_xmin`); a refresh reads its rows and its snapshot in one REPEATABLE READ
transaction. SQLite commits writers one at a time, in id order: the floor is the highest id
read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import LargeBinary, select, text
from sqlalchemy.orm import Session

from custody.chain._blockscan import mark, mark_packed

BITS = 1 << 27
MASK = BITS - 1
READ_ROWS = 50_000  # rows fetched at a time while loading (bounds the memory of a load)


@dataclass
class _Source:
    """One table's (id, key) columns and how far they have been read."""

    id_column: Any
    key_column: Any
    floor: int = 0  # every row with id <= floor is in the bitmap
    top: int = 0  # the highest id read
    checkpoints: list[tuple[int, int]] = field(default_factory=list)  # (snapshot xmax, top)

    def advance(self, xmin: int, xmax: int) -> None:
        """Raise the floor to an earlier refresh's top once every transaction that had an xid
        at the refresh after it has ended (a writer whose id was given just before a snapshot
        may get its xid just after it; by the next refresh it has one)."""
        self.checkpoints.append((xmax, self.top))
        while len(self.checkpoints) >= 2 and self.checkpoints[1][0] <= xmin:
            self.floor = max(self.floor, self.checkpoints.pop(0)[1])


def _read_into(bits: bytearray, s: Session, source: _Source, postgres: bool) -> Iterator[int]:
    """Set the bits of the source's rows above its floor, in batches of at most READ_ROWS, each
    asked for by id (the memory of a load does not grow with the table); yields each batch's
    row count after raising `source.top` to its highest id.

    On PostgreSQL a batch comes back as one value, its keys packed by the server (`string_agg`
    of a 2-byte length and the key; a text key as its UTF-8 bytes, whose hash is the str's for
    the ASCII txids, and no other key can match a block's hex txid) and marked by
    `mark_packed`: a million addresses in ~0.05 s of the watcher's CPU, against ~0.4 s as a
    million rows through the driver (and over 10 s through the ORM's)."""
    after = source.floor
    if not postgres:
        while rows := s.execute(
            select(source.id_column, source.key_column)
            .where(source.id_column > after)
            .order_by(source.id_column)
            .limit(READ_ROWS)
        ).all():
            mark(bits, [key for _, key in rows])
            after = source.top = max(source.top, int(rows[-1][0]))  # in id order
            yield len(rows)
        return
    table, id_name = source.id_column.table.name, source.id_column.name
    key = source.key_column.name
    if not isinstance(source.key_column.type, LargeBinary):
        key = f"convert_to({key}, 'UTF8')"
    sql = (
        "SELECT count(*), max(id), "  # noqa: S608 - our columns
        "string_agg(int2send(length(k)::int2) || k, ''::bytea) "
        f"FROM (SELECT {id_name} AS id, {key} AS k FROM {table} "
        f"WHERE {id_name} > %s ORDER BY {id_name} LIMIT {READ_ROWS}) AS batch"
    )
    driver = s.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cur:
        while True:
            row = cur.execute(sql, (after,)).fetchone()
            if row is None or not row[0]:
                return
            if row[2] is not None:
                mark_packed(bits, row[2])
            after = source.top = max(source.top, int(row[1]))
            yield int(row[0])


class MatchFilter:
    """The keys of some tables' column (e.g. `addresses.script_pubkey`); `refresh` before
    `candidates`."""

    def __init__(self, columns: Iterable[tuple[Any, Any]]) -> None:
        self.bits = bytearray(BITS // 8)
        self.sources = [_Source(id_column, key_column) for id_column, key_column in columns]

    def refresh(self, s: Session) -> int:
        """Add the rows stored since the last refresh; returns how many were read. `s` must
        not be in a transaction yet (this one is REPEATABLE READ on PostgreSQL)."""
        postgres = s.get_bind().dialect.name == "postgresql"
        if postgres:
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        read = 0
        bits = self.bits
        for source in self.sources:
            read += sum(_read_into(bits, s, source, postgres))
            if not postgres:
                source.floor = source.top
        if postgres:
            xmin, xmax = s.execute(
                text(
                    "SELECT pg_snapshot_xmin(c)::text, pg_snapshot_xmax(c)::text "
                    "FROM pg_current_snapshot() AS c"
                )
            ).one()
            s.rollback()
            for source in self.sources:
                source.advance(int(xmin), int(xmax))
        return read

    def candidates(self, keys: Iterable[Any]) -> list[Any]:
        """The keys that may be stored (all of those stored among them), in their order."""
        bits = self.bits
        return [k for k in keys if bits[(i := hash(k) & MASK) >> 3] >> (i & 7) & 1]
