"""The derivation helper process: `python -m wallet_core.derive_worker`.

Started by `derive_helper` with pipes on stdin and stdout; answers one request at a time
(`derive_wire` frames) until its stdin closes, which happens when the process that started
it closes the pipe or dies, so it never outlives its parent. It only ever sees public chain
keys. Its stdout is moved to a private descriptor first, so a stray print cannot corrupt the
frames.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import BinaryIO

from . import derive_wire as wire
from . import secp
from .bip32 import ChainDeriver, ExtendedKey
from .errors import WalletError
from .networks import Network

log = logging.getLogger(__name__)

_XPUB = Network.MAINNET.params.xkey.public  # any public version: only the key and code count


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    if not data:
        return None  # the parent closed the pipe: time to go
    if len(data) != size:
        raise wire.WireError("truncated request")
    return data


def derive(chains: list[tuple[bytes, bytes]], start: int, count: int) -> bytes:
    """The packed child keys of every chain, chain after chain."""
    out = []
    for code, key in chains:
        chain_key = ExtendedKey(_XPUB, 0, bytes(4), 0, code, key)
        out.append(ChainDeriver(chain_key).packed(start, count))
    return b"".join(out)


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until `requests` ends."""
    secp.BatchPointMultiplier.shared()  # build the window table before saying ready
    answers.write(wire.READY)
    answers.flush()
    while True:
        header = _read_exact(requests, wire.request_header_size())
        if header is None:
            return
        start, count, body_size = wire.decode_request_header(header)
        body = _read_exact(requests, body_size)
        if body is None:
            return
        try:
            answer = wire.encode_answer(wire.OK, derive(wire.decode_chains(body), start, count))
        except WalletError as exc:  # the caller derives the range itself and sees the error
            answer = wire.encode_answer(wire.FAILED, exc.message.encode())
        answers.write(answer)
        answers.flush()


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when we stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.WARNING, format="derive_worker: %(message)s")
    with (
        os.fdopen(sys.stdin.fileno(), "rb", closefd=False) as requests,
        os.fdopen(out_fd, "wb") as answers,
    ):
        try:
            serve(requests, answers)
        except (wire.WireError, BrokenPipeError) as exc:
            log.warning("stopping: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
