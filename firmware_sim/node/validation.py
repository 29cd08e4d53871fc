"""Transaction validation the way Bitcoin Core's mempool and `ConnectBlock` do it.

Consensus checks (`check_transaction`, `check_tx_inputs`, scripts with the consensus flags) and
the policy Core enforces on relay (`is_standard_tx`, dust, input and witness standardness,
scripts with the standard flags). Reject reasons are Core's strings, because clients and
operators match on them. Scripts are run by python-bitcointx's `VerifyScript`, a port of
Core's interpreter that shares no code with our wallet core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from bitcointx.core import CTransaction, ValidationError
from bitcointx.core.script import (
    OP_CHECKMULTISIG,
    OP_CHECKMULTISIGVERIFY,
    OP_CHECKSIGVERIFY,
    OP_EQUALVERIFY,
    OP_NUMEQUALVERIFY,
    OP_RETURN,
    OP_VERIFY,
    CScript,
    CScriptWitness,
)
from bitcointx.core.scripteval import (
    SCRIPT_VERIFY_CLEANSTACK,
    SCRIPT_VERIFY_DERSIG,
    SCRIPT_VERIFY_DISCOURAGE_UPGRADABLE_NOPS,
    SCRIPT_VERIFY_DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM,
    SCRIPT_VERIFY_LOW_S,
    SCRIPT_VERIFY_MINIMALIF,
    SCRIPT_VERIFY_NULLDUMMY,
    SCRIPT_VERIFY_NULLFAIL,
    SCRIPT_VERIFY_P2SH,
    SCRIPT_VERIFY_STRICTENC,
    SCRIPT_VERIFY_WITNESS,
    SCRIPT_VERIFY_WITNESS_PUBKEYTYPE,
    EvalScriptError,
    MaxOpCountError,
    MissingOpArgumentsError,
    VerifyOpFailedError,
    VerifyScript,
)

from firmware_sim.node.blocks import (
    COINBASE_MATURITY,
    MAX_BLOCK_WEIGHT,
    MAX_MONEY,
    WITNESS_SCALE_FACTOR,
    tx_weight,
)

MAX_STANDARD_TX_WEIGHT = 400_000
MIN_STANDARD_TX_NONWITNESS_SIZE = 65
MAX_STANDARD_SCRIPTSIG_SIZE = 1650
MAX_OP_RETURN_RELAY = 83
DUST_RELAY_FEE = 3000  # sat/kvB, Core's DUST_RELAY_TX_FEE
MAX_STANDARD_P2WSH_SCRIPT_SIZE = 3600
MAX_STANDARD_P2WSH_STACK_ITEMS = 100
MAX_STANDARD_P2WSH_STACK_ITEM_SIZE = 80
MAX_P2SH_SIGOPS = 15
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_LOCKTIME_DISABLE_FLAG = 1 << 31
SEQUENCE_LOCKTIME_TYPE_FLAG = 1 << 22
SEQUENCE_LOCKTIME_MASK = 0x0000FFFF
MEMPOOL_HEIGHT = 0x7FFFFFFF

# Core's MANDATORY_SCRIPT_VERIFY_FLAGS (consensus) and STANDARD_SCRIPT_VERIFY_FLAGS, restricted
# to what python-bitcointx implements (it lacks CLTV, CSV, MINIMALDATA, CONST_SCRIPTCODE).
MANDATORY_FLAGS = frozenset(
    {SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_DERSIG, SCRIPT_VERIFY_NULLDUMMY, SCRIPT_VERIFY_WITNESS}
)
STANDARD_FLAGS = MANDATORY_FLAGS | {
    SCRIPT_VERIFY_STRICTENC,
    SCRIPT_VERIFY_LOW_S,
    SCRIPT_VERIFY_DISCOURAGE_UPGRADABLE_NOPS,
    SCRIPT_VERIFY_CLEANSTACK,
    SCRIPT_VERIFY_MINIMALIF,
    SCRIPT_VERIFY_NULLFAIL,
    SCRIPT_VERIFY_DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM,
    SCRIPT_VERIFY_WITNESS_PUBKEYTYPE,
}


class TxResult(Enum):
    """Why a transaction failed (Core's `TxValidationResult`), which picks the RPC code."""

    CONSENSUS = "consensus"
    NOT_STANDARD = "not-standard"
    MISSING_INPUTS = "missing-inputs"
    PREMATURE_SPEND = "premature-spend"
    CONFLICT = "conflict"
    MEMPOOL_POLICY = "mempool-policy"
    RECONSIDERABLE = "reconsiderable"
    ALREADY_KNOWN = "already-known"


class TxValidationError(Exception):
    """A rejected transaction: Core's reject reason plus an optional debug message."""

    def __init__(self, result: TxResult, reason: str, debug: str = "") -> None:
        super().__init__(reason + (f", {debug}" if debug else ""))
        self.result = result
        self.reason = reason
        self.debug = debug

    @property
    def message(self) -> str:
        """Core's `ValidationState::ToString()`."""
        return self.reason + (f", {self.debug}" if self.debug else "")


@dataclass(frozen=True)
class Coin:
    """An unspent output with the height it was created at (MEMPOOL_HEIGHT if unconfirmed)."""

    value: int
    script: bytes
    height: int
    coinbase: bool


def format_money(sats: int) -> str:
    """Core's `FormatMoney`: at least two decimals, trailing zeros trimmed."""
    sign = "-" if sats < 0 else ""
    q, r = divmod(abs(sats), 100_000_000)
    frac = f"{r:08d}".rstrip("0")
    return f"{sign}{q}.{frac.ljust(2, '0')}"


# ---------------------------------------------------------------- context-free consensus


def check_transaction(tx: CTransaction) -> None:
    """Core's `CheckTransaction`."""
    if not tx.vin:
        raise TxValidationError(TxResult.CONSENSUS, "bad-txns-vin-empty")
    if not tx.vout:
        raise TxValidationError(TxResult.CONSENSUS, "bad-txns-vout-empty")
    if len(tx.serialize(include_witness=False)) * WITNESS_SCALE_FACTOR > MAX_BLOCK_WEIGHT:
        raise TxValidationError(TxResult.CONSENSUS, "bad-txns-oversize")
    total = 0
    for out in tx.vout:
        if out.nValue < 0:
            raise TxValidationError(TxResult.CONSENSUS, "bad-txns-vout-negative")
        if out.nValue > MAX_MONEY:
            raise TxValidationError(TxResult.CONSENSUS, "bad-txns-vout-toolarge")
        total += out.nValue
        if not 0 <= total <= MAX_MONEY:
            raise TxValidationError(TxResult.CONSENSUS, "bad-txns-txouttotal-toolarge")
    seen = set()
    for txin in tx.vin:
        key = (bytes(txin.prevout.hash), txin.prevout.n)
        if key in seen:
            raise TxValidationError(TxResult.CONSENSUS, "bad-txns-inputs-duplicate")
        seen.add(key)
    if tx.is_coinbase():
        if not 2 <= len(tx.vin[0].scriptSig) <= 100:
            raise TxValidationError(TxResult.CONSENSUS, "bad-cb-length")
    elif any(txin.prevout.is_null() for txin in tx.vin):
        raise TxValidationError(TxResult.CONSENSUS, "bad-txns-prevout-null")


# ---------------------------------------------------------------- script types (Core's Solver)


def _is_pubkey(data: bytes) -> bool:
    return (len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)


def _small_int(op: int) -> int | None:
    if op == 0:
        return 0
    if 0x51 <= op <= 0x60:
        return op - 0x50
    return None


def script_ops(script: bytes) -> list[tuple[int, bytes | None]] | None:
    """(opcode, pushed data or None) for each op; None if the script does not parse."""
    try:
        return [(int(op), data) for op, data, _ in CScript(script).raw_iter()]
    except Exception:  # noqa: BLE001 - any malformed push means "does not parse"
        return None


def is_push_only(script: bytes) -> bool:
    ops = script_ops(script)
    return ops is not None and all(op <= 0x60 for op, _ in ops)


def solver(script: bytes) -> tuple[str, list[bytes]]:
    """The standard type of an output script and its parameters, named as Core names them."""
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash", [script[3:23]]
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return "scripthash", [script[2:22]]
    if 4 <= n <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] + 2 == n:
        version = 0 if script[0] == 0 else script[0] - 0x50
        program = script[2:]
        if version == 0 and len(program) == 20:
            return "witness_v0_keyhash", [program]
        if version == 0 and len(program) == 32:
            return "witness_v0_scripthash", [program]
        if version == 1 and len(program) == 32:
            return "witness_v1_taproot", [program]
        if version != 0:
            return "witness_unknown", [bytes([version]), program]
        return "nonstandard", []
    if n >= 1 and script[0] == OP_RETURN and is_push_only(script[1:]):
        return "nulldata", []
    ops = script_ops(script)
    if ops is None:
        return "nonstandard", []
    if len(ops) == 2 and ops[1][0] == 0xAC and ops[0][1] is not None and _is_pubkey(ops[0][1]):
        return "pubkey", [ops[0][1]]
    if len(ops) >= 4 and ops[-1][0] == OP_CHECKMULTISIG:
        m, k = _small_int(ops[0][0]), _small_int(ops[-2][0])
        keys = [data for _, data in ops[1:-2]]
        if (
            m is not None
            and k is not None
            and 1 <= m <= k == len(keys)
            and all(d is not None and _is_pubkey(d) for d in keys)
        ):
            return "multisig", [bytes([m]), *[d for d in keys if d is not None], bytes([k])]
    return "nonstandard", []


# ---------------------------------------------------------------- policy


def dust_threshold(script: bytes) -> int:
    """Core's `GetDustThreshold` at the default dust relay fee (3 sat/vB)."""
    if (script and script[0] == OP_RETURN) or len(script) > 10_000:
        return 0
    size = 8 + _compact_size_len(len(script)) + len(script)
    kind, _ = solver(script)
    is_witness = kind.startswith("witness_") or (
        4 <= len(script) <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60)
    )
    size += (32 + 4 + 1 + 107 // WITNESS_SCALE_FACTOR + 4) if is_witness else (32 + 4 + 1 + 107 + 4)
    return size * DUST_RELAY_FEE // 1000


def _compact_size_len(n: int) -> int:
    return 1 if n < 253 else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9


def is_standard_tx(tx: CTransaction) -> None:
    """Core's `IsStandardTx` (version, size, scriptSig, output types, dust, OP_RETURN)."""
    if tx.nVersion < 1 or tx.nVersion > 2:
        raise TxValidationError(TxResult.NOT_STANDARD, "version")
    if tx_weight(tx) > MAX_STANDARD_TX_WEIGHT:
        raise TxValidationError(TxResult.NOT_STANDARD, "tx-size")
    for txin in tx.vin:
        if len(txin.scriptSig) > MAX_STANDARD_SCRIPTSIG_SIZE:
            raise TxValidationError(TxResult.NOT_STANDARD, "scriptsig-size")
        if not is_push_only(bytes(txin.scriptSig)):
            raise TxValidationError(TxResult.NOT_STANDARD, "scriptsig-not-pushonly")
    data_outputs = 0
    for out in tx.vout:
        script = bytes(out.scriptPubKey)
        kind, sol = solver(script)
        if kind == "nonstandard":
            raise TxValidationError(TxResult.NOT_STANDARD, "scriptpubkey")
        if kind == "multisig" and not (1 <= sol[0][0] <= sol[-1][0] <= 3):
            raise TxValidationError(TxResult.NOT_STANDARD, "scriptpubkey")
        if kind == "nulldata":
            if len(script) > MAX_OP_RETURN_RELAY:
                raise TxValidationError(TxResult.NOT_STANDARD, "scriptpubkey")
            data_outputs += 1
        elif out.nValue < dust_threshold(script):
            raise TxValidationError(TxResult.NOT_STANDARD, "dust")
    if data_outputs > 1:
        raise TxValidationError(TxResult.NOT_STANDARD, "multi-op-return")


def check_tx_size_small(tx: CTransaction) -> None:
    if len(tx.serialize(include_witness=False)) < MIN_STANDARD_TX_NONWITNESS_SIZE:
        raise TxValidationError(TxResult.NOT_STANDARD, "tx-size-small")


def is_final_tx(tx: CTransaction, height: int, block_time: int) -> bool:
    """Core's `IsFinalTx` for a block at `height` with median-time-past `block_time`."""
    if tx.nLockTime == 0:
        return True
    limit = height if tx.nLockTime < LOCKTIME_THRESHOLD else block_time
    if tx.nLockTime < limit:
        return True
    return all(txin.nSequence == SEQUENCE_FINAL for txin in tx.vin)


def sequence_locks_ok(
    tx: CTransaction,
    coins: list[Coin],
    next_height: int,
    mtp_at: Callable[[int], int],
    prev_mtp: int,
) -> bool:
    """BIP68 relative lock-times (Core's `CalculateSequenceLocks` + `EvaluateSequenceLocks`)."""
    if tx.nVersion < 2 or tx.is_coinbase():
        return True
    min_height, min_time = -1, -1
    for txin, coin in zip(tx.vin, coins, strict=True):
        seq = txin.nSequence
        if seq & SEQUENCE_LOCKTIME_DISABLE_FLAG:
            continue
        coin_height = next_height if coin.height == MEMPOOL_HEIGHT else coin.height
        if seq & SEQUENCE_LOCKTIME_TYPE_FLAG:
            coin_time = mtp_at(max(coin_height - 1, 0))
            min_time = max(min_time, coin_time + ((seq & SEQUENCE_LOCKTIME_MASK) << 9) - 1)
        else:
            min_height = max(min_height, coin_height + (seq & SEQUENCE_LOCKTIME_MASK) - 1)
    return min_height < next_height and min_time < prev_mtp


def check_tx_inputs(tx: CTransaction, coins: list[Coin], spend_height: int) -> int:
    """Core's `Consensus::CheckTxInputs`: maturity and amounts. Returns the fee."""
    value_in = 0
    for coin in coins:
        if coin.coinbase and spend_height - coin.height < COINBASE_MATURITY:
            raise TxValidationError(
                TxResult.PREMATURE_SPEND,
                "bad-txns-premature-spend-of-coinbase",
                f"tried to spend coinbase at depth {spend_height - coin.height}",
            )
        value_in += coin.value
        if not (0 <= coin.value <= MAX_MONEY and 0 <= value_in <= MAX_MONEY):
            raise TxValidationError(TxResult.CONSENSUS, "bad-txns-inputvalues-outofrange")
    value_out = sum(out.nValue for out in tx.vout)
    if value_in < value_out:
        raise TxValidationError(
            TxResult.CONSENSUS,
            "bad-txns-in-belowout",
            f"value in ({format_money(value_in)}) < value out ({format_money(value_out)})",
        )
    fee = value_in - value_out
    if not 0 <= fee <= MAX_MONEY:
        raise TxValidationError(TxResult.CONSENSUS, "bad-txns-fee-outofrange")
    return fee


def check_taproot_unsupported(coins: list[Coin]) -> None:
    """Refuse spends we cannot judge: python-bitcointx does not evaluate taproot scripts."""
    for coin in coins:
        if solver(coin.script)[0] == "witness_v1_taproot":
            raise TxValidationError(
                TxResult.NOT_STANDARD,
                "bad-txns-nonstandard-inputs",
                "taproot spends are not validated by this simulated node",
            )


def are_inputs_standard(tx: CTransaction, coins: list[Coin]) -> None:
    """Core's `AreInputsStandard`: known prevout types, P2SH redeem script sigop limit."""
    for txin, coin in zip(tx.vin, coins, strict=True):
        kind, _ = solver(coin.script)
        if kind in ("nonstandard", "witness_unknown"):
            raise TxValidationError(TxResult.NOT_STANDARD, "bad-txns-nonstandard-inputs")
        if kind == "scripthash":
            ops = script_ops(bytes(txin.scriptSig))
            if not ops or ops[-1][1] is None:
                raise TxValidationError(TxResult.NOT_STANDARD, "bad-txns-nonstandard-inputs")
            redeem = CScript(ops[-1][1])
            if redeem.GetSigOpCount(True) > MAX_P2SH_SIGOPS:
                raise TxValidationError(TxResult.NOT_STANDARD, "bad-txns-nonstandard-inputs")


def is_witness_standard(tx: CTransaction, coins: list[Coin]) -> None:
    """Core's `IsWitnessStandard` for P2WSH (script size, stack items and their sizes)."""
    if not tx.has_witness():
        return
    for i, (txin, coin) in enumerate(zip(tx.vin, coins, strict=True)):
        stack = list(_witness(tx, i).stack)
        if not stack:
            continue
        script = coin.script
        if solver(script)[0] == "scripthash":
            ops = script_ops(bytes(txin.scriptSig))
            script = ops[-1][1] if ops and ops[-1][1] is not None else b""
        kind = solver(script)[0]
        if kind in ("nonstandard", "pubkeyhash", "scripthash", "pubkey", "multisig", "nulldata"):
            raise TxValidationError(TxResult.NOT_STANDARD, "bad-witness-nonstandard")
        if kind == "witness_v0_scripthash":
            if len(stack[-1]) > MAX_STANDARD_P2WSH_SCRIPT_SIZE:
                raise TxValidationError(TxResult.NOT_STANDARD, "bad-witness-nonstandard")
            if len(stack) - 1 > MAX_STANDARD_P2WSH_STACK_ITEMS:
                raise TxValidationError(TxResult.NOT_STANDARD, "bad-witness-nonstandard")
            if any(len(item) > MAX_STANDARD_P2WSH_STACK_ITEM_SIZE for item in stack[:-1]):
                raise TxValidationError(TxResult.NOT_STANDARD, "bad-witness-nonstandard")


# ---------------------------------------------------------------- scripts


def _witness(tx: CTransaction, index: int) -> CScriptWitness:
    if tx.wit.is_null() or index >= len(tx.wit.vtxinwit):
        return CScriptWitness([])
    return tx.wit.vtxinwit[index].scriptWitness


_VERIFY_OP_ERRORS = {
    int(OP_EQUALVERIFY): "Script failed an OP_EQUALVERIFY operation",
    int(OP_VERIFY): "Script failed an OP_VERIFY operation",
    int(OP_CHECKSIGVERIFY): "Script failed an OP_CHECKSIGVERIFY operation",
    int(OP_CHECKMULTISIGVERIFY): "Script failed an OP_CHECKMULTISIGVERIFY operation",
    int(OP_NUMEQUALVERIFY): "Script failed an OP_NUMEQUALVERIFY operation",
}

EVAL_FALSE = "Script evaluated without error but finished with a false/empty top stack element"

# python-bitcointx message fragment -> Core's ScriptErrorString.
_MESSAGE_ERRORS = (
    ("not low-S", "Non-canonical signature: S value is unnecessarily high"),
    ("DER encoding is not strictly valid", "Non-canonical DER signature"),
    ("unknown hashtype", "Signature hash type missing or not understood"),
    ("unknown pubkey type", "Public key is neither compressed or uncompressed"),
    ("witness pubkey is not compressed", "Using non-compressed keys in segwit"),
    ("dummy value not OP_0", "Dummy CHECKMULTISIG argument must be zero"),
    ("signature check failed, and", "Signature must be zero for failed CHECK(MULTI)SIG operation"),
    ("left extra items", "Stack size must be exactly one after execution"),
    ("returned false", EVAL_FALSE),
    ("left an empty stack", EVAL_FALSE),
    ("witness is empty", "Witness program was passed an empty witness"),
    ("witness program mismatch", "Witness program hash mismatch"),
    ("wrong length for witness program", "Witness program has incorrect length"),
    ("upgradeable witness program", "Witness version reserved for soft-fork upgrades"),
    ("scriptSig is not empty", "Witness requires empty scriptSig"),
    ("single push of the redeemScript", "Witness requires only-redeemscript scriptSig"),
    ("Unexpected witness", "Witness provided for non-witness script"),
    ("is_push_only", "Only push operators allowed in signatures"),
    ("OP_RETURN called", "OP_RETURN was encountered"),
    ("is disabled", "Attempted to use a disabled opcode"),
    ("keys count invalid", "Pubkey count negative or limit exceeded"),
    ("sigs count invalid", "Signature count negative or greater than pubkey count"),
    ("not enough", "Operation not valid with the current stack size"),
    ("missing dummy value", "Operation not valid with the current stack size"),
    ("script too large", "Script is too big"),
    ("maximum push size", "Push value size limit exceeded"),
    ("max stack items", "Stack size limit exceeded"),
    ("reserved for soft-fork", "NOPx reserved for soft-fork upgrades"),
    ("MINIMALIF", "OP_IF/NOTIF argument must be minimal"),
    ("without prior IF", "Invalid OP_IF construction"),
    ("unsupported opcode", "Opcode missing or not understood"),
)


def script_error_string(exc: Exception) -> str:
    """Translate a python-bitcointx script failure into Core's `ScriptErrorString`."""
    if isinstance(exc, VerifyOpFailedError) and exc.state.sop is not None:
        return _VERIFY_OP_ERRORS.get(int(exc.state.sop), "unknown error")
    if isinstance(exc, MaxOpCountError):
        return "Operation limit exceeded"
    if isinstance(exc, MissingOpArgumentsError):
        return "Operation not valid with the current stack size"
    text = str(exc)
    for fragment, message in _MESSAGE_ERRORS:
        if fragment in text:
            return message
    if isinstance(exc, EvalScriptError) and "NOP" in text:
        return "NOPx reserved for soft-fork upgrades"
    return "unknown error"


def _first_script_failure(
    tx: CTransaction, coins: list[Coin], flags: frozenset[object]
) -> Exception | None:
    for i, (txin, coin) in enumerate(zip(tx.vin, coins, strict=True)):
        try:
            VerifyScript(
                txin.scriptSig,
                CScript(coin.script),
                tx,
                i,
                flags=set(flags),  # type: ignore[arg-type]  # bitcointx flags are untyped objects
                amount=coin.value,
                witness=_witness(tx, i),
            )
        except (ValidationError, ValueError, IndexError, TypeError) as exc:
            return exc
    return None


def verify_scripts(tx: CTransaction, coins: list[Coin], *, policy: bool) -> None:
    """Run every input's script; on failure raise Core's (non-)mandatory reject reason.

    With `policy`, like the mempool: check the standard flags and, on failure, re-check with
    the consensus flags only to tell a policy failure (non-mandatory) from an invalid spend.
    Without, like a block: consensus flags only.
    """
    if not policy:
        failure = _first_script_failure(tx, coins, MANDATORY_FLAGS)
        if failure is not None:
            raise TxValidationError(
                TxResult.CONSENSUS,
                f"mandatory-script-verify-flag-failed ({script_error_string(failure)})",
            )
        return
    failure = _first_script_failure(tx, coins, STANDARD_FLAGS)
    if failure is None:
        return
    consensus_failure = _first_script_failure(tx, coins, MANDATORY_FLAGS)
    if consensus_failure is None:
        raise TxValidationError(
            TxResult.NOT_STANDARD,
            f"non-mandatory-script-verify-flag-failed ({script_error_string(failure)})",
        )
    raise TxValidationError(
        TxResult.CONSENSUS,
        f"mandatory-script-verify-flag-failed ({script_error_string(consensus_failure)})",
    )
