"""Descriptions, units, formats and examples of every field of the OpenAPI document, and the
list of every error code, kept apart from the document's structure (`custody.openapi_spec`).

Each property of each schema gets a description and an example; amounts say their unit
(`x-unit: satoshi`) and format (`int64`). `annotate` fills what a schema does not say itself;
a test checks that nothing is left without.
"""

from __future__ import annotations

from typing import Any

from custody import errors

SAT = {"format": "int64", "x-unit": "satoshi"}
EXAMPLE_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
EXAMPLE_ADDR = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"

# name (or "Schema.name") -> what the field says
FIELDS: dict[str, dict[str, Any]] = {
    "cold_statement": {
        "description": "extension: the cold HSM's signed final word on the send",
        "example": {"state": "signed", "txid": EXAMPLE_TXID, "signature": "H1b2...="},
    },
    "after": {"description": "return events with a sequence number above this", "example": 0},
    "limit": {"description": "at most this many events", "example": 100},
    "wait": {"description": "seconds to wait for a new event (long polling)", "example": 20},
    # extensions: money movement, events, the cold HSM's statements
    "cc_state": {"description": "extension: the detailed state", "example": "confirmed"},
    "cc_state_at": {
        "description": "extension: when that state began, UTC",
        "example": "2026-12-05T08:35:36",
    },
    "cc_dust": {
        "description": "extension: pays us below the dust threshold (never spent)",
        "example": False,
    },
    "cc_state_reason": {
        "description": "extension: why the send waits (empty otherwise)",
        "example": "have 0 sat in usable UTXOs",
    },
    "Event.id": {"description": "the event's row id", "example": 42},
    "Event.seq": {"description": "gap-free sequence number within the account", "example": 7},
    "Event.account_id": {"description": "the account number", "example": 1},
    "Event.kind": {
        "description": "what happened (deposit.confirmed, send.broadcast, ...)",
        "example": "deposit.confirmed",
    },
    "Event.side": {"description": "which token sees it: cold, hot or both", "example": "cold"},
    "Event.data": {
        "description": "the event's fields (txid, value in satoshi, ...)",
        "example": {"txid": EXAMPLE_TXID, "value": 50_000_000},
    },
    "EventPage.events": {"description": "events after `after`, oldest first"},
    "EventPage.last_seq": {
        "description": "the newest sequence number this token can see",
        "example": 7,
    },
    "SendState.send_request": {"description": "the V-device-signed request, as posted"},
    "ColdStatement.state": {
        "description": "signed: co-signed txid; refused: never co-signed",
        "example": "signed",
    },
    "ColdStatement.signature": {
        "description": "the cold identity key's signed-message signature (base64)",
        "example": "H1b2...=",
    },
    "Tx.inputs": {"description": "the transaction's inputs"},
    "Tx.outputs": {"description": "the transaction's outputs"},
    "code": {"description": "error code (see x-error-codes)", "example": 2},
    "message": {"description": "what was wrong, for a human", "example": "outs is required"},
    "time": {"description": "the server's time, UTC", "example": "2026-12-05T08:35:36"},
    "user_id": {"description": "the account number", "example": 1, "format": "int64"},
    "user_name": {"description": "the account's name", "example": "acme"},
    "balance": {
        "description": "confirmed balance of the token's side (min_confirmations)",
        "example": 1_500_000,
        **SAT,
    },
    "receiving_index": {"description": "index of the current receiving address", "example": 7},
    "address": {
        "description": "a bitcoin address of the deployment's network",
        "example": EXAMPLE_ADDR,
    },
    "register_at": {
        "description": "when the account was created, UTC",
        "example": "2026-12-01T10:00:00",
    },
    "wallet": {"description": "the token's side", "example": "cold"},
    "User.status": {"description": "frozen: sends are refused", "example": "active"},
    "network": {"description": "bitcoin network of the account", "example": "regtest"},
    "min_confirmations": {"description": "confirmations counted in balance", "example": 1},
    "descriptor": {
        "description": "output descriptor of the side's receiving addresses (public keys only)",
        "example": "wpkh([d34db33f/84h/1h/0h]tpubD6NzVbkrYhZ4X.../0/*)#abcd1234",
    },
    "index": {"description": "derivation index of the address", "example": 1000},
    "sn": {"description": "position in the transaction (input or output number)", "example": 0},
    "prev_tx_hash": {"description": "transaction the input spends", "example": EXAMPLE_TXID},
    "prev_out_sn": {"description": "output number the input spends", "example": 1},
    "value": {"description": "amount", "example": 250_000, **SAT},
    "Tx.value": {
        "description": "net effect on the token's side (negative for a spend)",
        "example": -120_000,
        **SAT,
    },
    "is_mine": {"description": "whether it belongs to the token's side", "example": True},
    "TxOutput.status": {"description": "1 unspent, 0 spent", "example": 1},
    "tx_hash": {
        "description": "transaction id (hex, as block explorers show it)",
        "example": EXAMPLE_TXID,
    },
    "confirmation": {"description": "number of confirmations (0 in the mempool)", "example": 3},
    "confirm_at": {
        "description": "time of the first confirmation, UTC",
        "example": "2026-12-05T09:00:00",
    },
    "tx_at": {
        "description": "when it was first seen (sent), UTC",
        "example": "2026-12-05T08:58:12",
    },
    "inputs": {"description": "the transaction's inputs"},
    "outputs": {"description": "the transaction's outputs"},
    "result": {"description": "true when done", "example": True},
    "coin_code": {"description": "the coin; only BTC", "example": "BTC"},
    "user_tx_no": {
        "description": "the merchant's unique number of the send (idempotency key)",
        "example": "order-1042",
    },
    "outs": {
        "description": "outputs as address,value;address,value with integer satoshi values",
        "example": f"{EXAMPLE_ADDR},150000",
        "x-unit": "satoshi (each value)",
    },
    "is_dynamic_fee": {"description": "1: the fee follows the node's estimate", "example": 1},
    "vc_code": {
        "description": "the V-device's signature of the request (base64 of 65 bytes)",
        "example": "H0r8...base64...=",
        "format": "byte",
    },
    "c_id": {"description": "the SMS channel the V-device signed under", "example": "7"},
    "BatchStatusForm.status": {"description": "2 verified, 3 failed", "example": 2},
    "type": {"description": "1 hot batch, 2 cold batch", "example": 2},
    "send_request": {"description": "the request as accepted"},
    "request_at": {
        "description": "when the send was accepted, UTC",
        "example": "2026-12-05T08:58:00",
    },
    "hot_wallet_tx_id": {"description": "custody's number of the send", "example": 12},
    "hot_wallet_tx_status": {"description": "pending, OK (broadcast) or failed", "example": "OK"},
    "path": {"description": "0 receiving, 1 change", "example": 0},
    "since_address": {"description": "continue after this address", "example": EXAMPLE_ADDR},
    "failure_reason": {"description": "why it failed (empty otherwise)", "example": ""},
}


def error_codes() -> list[dict[str, Any]]:
    """Every code the API answers with (`custody.errors.api_codes`, the one list)."""
    return [
        {"code": code, "status": status, "name": name, "meaning": meaning}
        for code, status, name, meaning in errors.api_codes()
    ]


def _annotate_schema(name: str, schema: dict[str, Any]) -> None:
    for prop, field in schema.get("properties", {}).items():
        extra = FIELDS.get(f"{name}.{prop}") or FIELDS.get(prop, {})
        for key, value in extra.items():
            field.setdefault(key, value)
        if field.get("type") == "object":
            _annotate_schema(f"{name}.{prop}", field)


def annotate_params(paths: dict[str, Any]) -> None:
    """Path and query parameters get a description and an example too."""
    for ops in paths.values():
        for op in ops.values():
            for param in op.get("parameters", []):
                extra = FIELDS.get(param["name"], {})
                if not param.get("description"):
                    param["description"] = extra.get("description", "")
                param.setdefault("example", extra.get("example"))


def annotate(schemas: dict[str, Any]) -> None:
    """Fill descriptions, units, formats and examples in place."""
    for name, schema in schemas.items():
        _annotate_schema(name, schema)
