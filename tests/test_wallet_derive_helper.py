"""The derivation helper process: a batch split between this process and its helper gives
exactly the addresses of the plain derivation (and of embit); a killed helper, a helper that
cannot derive, a fork and the parent's exit each leave correct results and no process behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from embit.descriptor import Descriptor as EmbitDescriptor

from wallet_core import derive_helper
from wallet_core.addresses import script_to_address
from wallet_core.bip32 import ChainDeriver, ExtendedKey
from wallet_core.errors import InvalidKeyError
from wallet_core.networks import Network
from wallet_core.wallets import (
    AccountKey,
    ColdWallet,
    FixedKey,
    HotWallet,
    batch_addresses,
    bip48_account_path,
)

NET = Network.REGTEST
READY_WAIT = 60.0  # a loaded machine: the helper imports coincurve and builds its table


@pytest.fixture
def helper() -> Iterator[None]:
    derive_helper.configure(enabled=True)
    assert derive_helper.start(wait=READY_WAIT), "the helper did not get ready"
    yield
    derive_helper.close()


def _wallets() -> tuple[ColdWallet, HotWallet, HotWallet]:
    roots = [ExtendedKey.from_seed(bytes([40 + n]) * 32, NET) for n in range(3)]
    cold = ColdWallet.from_root(roots[0], NET)
    path = bip48_account_path(NET, 0)
    keys = tuple(AccountKey.from_root(r, path) for r in roots)
    hot = HotWallet(keys, NET)  # type: ignore[arg-type]
    fixed = HotWallet((FixedKey(roots[0].public_key), keys[1], keys[2]), NET)
    return cold, hot, fixed


def _in_process(wallet: ColdWallet | HotWallet, batch_no: int) -> list[tuple[int, str]]:
    derive_helper.configure(enabled=False)
    try:
        return batch_addresses(wallet, batch_no)
    finally:
        derive_helper.configure(enabled=True)


def _state(pid: int) -> str | None:
    """The process's state letter, None once it is gone (a zombie is 'Z')."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _wait_gone(pid: int, deadline: float = 30.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _state(pid) in (None, "Z"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.usefixtures("helper")
@pytest.mark.parametrize("kind", ["cold", "hot", "hot-fixed"])
def test_split_batch_equals_in_process_and_embit(kind: str) -> None:
    wallet = dict(zip(("cold", "hot", "hot-fixed"), _wallets(), strict=True))[kind]
    served = derive_helper.served()
    split = batch_addresses(wallet, 3)
    assert derive_helper.served() == served + 1  # the helper derived part of it
    assert split == _in_process(wallet, 3)
    desc = EmbitDescriptor.from_string(str(wallet.descriptor(0)))
    for idx, addr in split[::83] + split[499:502] + [split[-1]]:
        assert script_to_address(desc.derive(idx).script_pubkey().data, NET) == addr


@pytest.mark.usefixtures("helper")
def test_split_keys_equal_the_plain_derivation() -> None:
    chain = ExtendedKey.from_seed(bytes(range(32)), NET).derive("m/0/1").to_public()
    packed = derive_helper.derive_columns([chain], 2**31 - 600, 600)[0]
    keys = derive_helper.split_keys(packed)
    assert keys == ChainDeriver(chain).pubkeys(2**31 - 600, 600)
    mid = int(600 * derive_helper.PARENT_SHARE)  # the first key the helper derived
    for k in (0, mid - 1, mid, 599):
        assert keys[k] == chain.child(2**31 - 600 + k).key


@pytest.mark.usefixtures("helper")
def test_a_small_range_stays_in_process() -> None:
    cold, _, _ = _wallets()
    served = derive_helper.served()
    cold.addresses(0, derive_helper.MIN_SPLIT - 1)
    assert derive_helper.served() == served


def test_threads_share_the_helper_or_derive_alone_and_all_get_their_batch() -> None:
    """Threads of one process (gthread workers) while the helper starts and once it is ready:
    each range goes to the helper if it is free, else is derived in the thread."""
    derive_helper.close()
    derive_helper.configure(enabled=True)
    cold, hot, fixed = _wallets()
    jobs = [(w, n) for n in range(3) for w in (cold, hot, fixed)]
    expected = [_in_process(w, n) for w, n in jobs]
    served = derive_helper.served()
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda job: batch_addresses(*job), jobs)) == expected
            derive_helper.start(wait=READY_WAIT)
    assert derive_helper.served() > served
    derive_helper.close()


@pytest.mark.usefixtures("helper")
def test_killed_helper_falls_back_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    cold, _, fixed = _wallets()
    expected = _in_process(cold, 1), _in_process(fixed, 2)
    pid = derive_helper.helper_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    with caplog.at_level(logging.WARNING, logger="wallet_core.derive_helper"):
        assert batch_addresses(cold, 1) == expected[0]
    assert f"derivation helper (pid {pid}) failed" in caplog.text
    assert derive_helper.helper_pid() is None
    assert _state(pid) is None  # reaped, not left a zombie
    # and it is not restarted at once: the next batch derives here too, correctly
    assert batch_addresses(fixed, 2) == expected[1]
    assert derive_helper.helper_pid() is None


@pytest.mark.usefixtures("helper")
def test_an_invalid_key_raises_and_the_helper_stays_in_step() -> None:
    pid = derive_helper.helper_pid()
    bad = ExtendedKey(bytes.fromhex("043587cf"), 1, bytes(4), 0, bytes(32), b"\x02" + b"\xff" * 32)
    with pytest.raises(InvalidKeyError):
        derive_helper.derive_columns([bad], 0, 1000)
    cold, _, _ = _wallets()
    served = derive_helper.served()
    assert batch_addresses(cold, 0) == _in_process(cold, 0)
    assert derive_helper.served() == served + 1
    assert derive_helper.helper_pid() == pid


@pytest.mark.usefixtures("helper")
def test_a_forked_child_uses_its_own_helper() -> None:
    cold, _, _ = _wallets()
    expected = _in_process(cold, 5)
    parent_helper = derive_helper.helper_pid()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which reports by its exit status
        ok = derive_helper.helper_pid() is None and derive_helper.start(wait=READY_WAIT)
        ok = ok and derive_helper.helper_pid() != parent_helper
        ok = ok and batch_addresses(cold, 5) == expected and derive_helper.served() > 0
        derive_helper.close()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    served = derive_helper.served()
    assert batch_addresses(cold, 5) == expected  # the parent's helper still answers in step
    assert derive_helper.served() == served + 1
    assert derive_helper.helper_pid() == parent_helper


def test_the_helper_exits_with_its_parent() -> None:
    """A parent that dies without cleaning up (os._exit, as after SIGKILL) leaves no helper."""
    code = (
        "import os, sys\n"
        "from wallet_core import derive_helper\n"
        f"assert derive_helper.start(wait={READY_WAIT})\n"
        "print(derive_helper.helper_pid(), flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert _wait_gone(int(done.stdout.strip()))


def test_close_stops_the_helper() -> None:
    derive_helper.configure(enabled=True)
    assert derive_helper.start(wait=READY_WAIT)
    pid = derive_helper.helper_pid()
    assert pid is not None
    derive_helper.close()
    assert derive_helper.helper_pid() is None
    assert _state(pid) is None
