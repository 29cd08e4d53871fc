"""The OpenAPI 3 document of the custody API, written by hand next to the reference table.

Hand-written so field names, types and error shapes are exactly the reference's, and so the
document can be read as the interface: every endpoint, every answer, every error status.
"""

from __future__ import annotations

from typing import Any

from custody.batches import MAX_BATCH_NO
from custody.errors import (
    api_codes,
)
from custody.models import DepositState, SendStatus
from custody.openapi_fields import annotate, annotate_params, error_codes

VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


ISO_TIME = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$",
    "description": "ISO-8601, UTC, without timezone (2016-08-02T12:51:34)",
}
NULLABLE_TIME = {**ISO_TIME, "type": ["string", "null"]}
TXID = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {
                "type": "integer",
                "enum": [code for code, *_ in api_codes()],
                "description": "; ".join(
                    f"{code} {name} (HTTP {status}): {meaning}"
                    for code, status, name, meaning in api_codes()
                ),
            },
            "message": {"type": "string"},
        },
    },
    "Time": {
        "type": "object",
        "required": ["time"],
        "properties": {"time": ISO_TIME},
    },
    "User": {
        "type": "object",
        "required": [
            "user_id",
            "user_name",
            "balance",
            "receiving_index",
            "address",
            "register_at",
        ],
        "properties": {
            "user_id": {"type": "integer"},
            "user_name": {"type": "string"},
            "balance": {
                "type": "integer",
                "description": "confirmed satoshi of the token's side (min confirmations)",
            },
            "receiving_index": {
                "type": ["integer", "null"],
                "description": "index of the current receiving address (null: none usable)",
            },
            "address": {
                "type": ["string", "null"],
                "description": "current receiving address: the one /address/next hands out next",
            },
            "register_at": ISO_TIME,
            "wallet": {"type": "string", "enum": ["cold", "hot"]},
            "status": {"type": "string", "enum": ["active", "frozen"]},
            "network": {"type": "string"},
            "min_confirmations": {"type": "integer"},
            "descriptor": {"type": "string"},
        },
    },
    "IndexedAddress": {
        "type": "object",
        "required": ["index", "address"],
        "properties": {"index": {"type": "integer"}, "address": {"type": "string"}},
    },
    "TxInput": {
        "type": "object",
        "required": ["sn", "prev_tx_hash", "prev_out_sn", "address", "value", "is_mine"],
        "properties": {
            "sn": {"type": "integer"},
            "prev_tx_hash": {"type": "string"},
            "prev_out_sn": {"type": "integer"},
            "address": {"type": "string"},
            "value": {"type": "integer"},
            "is_mine": {"type": "boolean"},
        },
    },
    "TxOutput": {
        "type": "object",
        "required": ["sn", "address", "value", "is_mine", "status"],
        "properties": {
            "sn": {"type": "integer"},
            "address": {"type": "string"},
            "value": {"type": "integer"},
            "is_mine": {"type": "boolean"},
            "status": {"type": "integer", "enum": [0, 1], "description": "1 unspent, 0 spent"},
        },
    },
    "Tx": {
        "type": "object",
        "required": [
            "tx_hash",
            "confirmation",
            "confirm_at",
            "tx_at",
            "value",
            "inputs",
            "outputs",
        ],
        "properties": {
            "tx_hash": TXID,
            "confirmation": {"type": "integer", "minimum": 0},
            "confirm_at": NULLABLE_TIME,
            "tx_at": ISO_TIME,
            "value": {
                "type": "integer",
                "description": "net effect on the side, satoshi (negative for spends)",
            },
            "inputs": {"type": "array", "items": _ref("TxInput")},
            "outputs": {"type": "array", "items": _ref("TxOutput")},
            "cc_state": {
                "type": "string",
                "enum": [s.value for s in DepositState],
                "description": "extension: seen (mempool), confirmed (depth in `confirmation`), "
                "final (at the deployment's final depth); replaced, conflicted, dropped and "
                "reorged as in docs/money.md. Only confirmed coins count in a balance.",
            },
            "cc_state_at": {**ISO_TIME, "description": "extension: when cc_state was entered"},
            "cc_dust": {
                "type": "boolean",
                "description": "extension: pays one of our receiving addresses less than the "
                "dust threshold; recorded, never spent",
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "seq", "account_id", "kind", "side", "at", "data"],
        "properties": {
            "id": {"type": "integer"},
            "seq": {"type": "integer", "minimum": 1},
            "account_id": {"type": "integer"},
            "kind": {"type": "string"},
            "side": {"type": "string", "enum": ["hot", "cold", "both"]},
            "at": ISO_TIME,
            "data": {"type": "object"},
        },
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "last_seq"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event"), "maxItems": 500},
            "last_seq": {"type": "integer", "description": "seq to pass as `after` next"},
        },
    },
    "Result": {
        "type": "object",
        "required": ["result"],
        "properties": {"result": {"type": "boolean"}},
    },
    "SendRequestForm": {
        "type": "object",
        "required": ["user_tx_no", "outs", "vc_code", "c_id"],
        "properties": {
            "coin_code": {"type": "string", "default": "BTC", "enum": ["BTC"]},
            "user_tx_no": {"type": "string", "minLength": 1, "maxLength": 64},
            "outs": {
                "type": "string",
                "description": "addr,value;addr,value (integer satoshi, above dust)",
            },
            "is_dynamic_fee": {"type": "integer", "enum": [0, 1], "default": 1},
            "vc_code": {
                "type": "string",
                "description": "the V-device's signed message (base64, 65 bytes)",
            },
            "c_id": {"type": "string", "maxLength": 64},
        },
    },
    "BatchStatusForm": {
        "type": "object",
        "required": ["status", "type"],
        "properties": {
            "status": {"type": "integer", "enum": [2, 3], "description": "2 verified, 3 failed"},
            "type": {"type": "integer", "enum": [1, 2], "description": "1 hot, 2 cold"},
        },
    },
    "SendState": {
        "type": "object",
        "required": [
            "tx_hash",
            "c_id",
            "user_id",
            "send_request",
            "vc_code",
            "request_at",
            "hot_wallet_tx_id",
            "tx_at",
            "hot_wallet_tx_status",
        ],
        "properties": {
            "tx_hash": {"type": ["string", "null"]},
            "c_id": {"type": "string"},
            "user_id": {"type": "integer"},
            "send_request": {
                "type": "object",
                "required": ["coin_code", "user_tx_no", "is_dynamic_fee", "outs"],
                "properties": {
                    "coin_code": {"type": "string"},
                    "user_tx_no": {"type": "string"},
                    "is_dynamic_fee": {"type": "integer", "enum": [0, 1]},
                    "outs": {"type": "string"},
                },
            },
            "vc_code": {"type": "string"},
            "request_at": ISO_TIME,
            "hot_wallet_tx_id": {"type": "integer"},
            "tx_at": NULLABLE_TIME,
            "hot_wallet_tx_status": {"type": "string", "enum": ["pending", "OK", "failed"]},
            "failure_reason": {"type": "string"},
            "cc_state": {
                "type": "string",
                "enum": [s.value for s in SendStatus],
                "description": "extension: the pipeline state behind hot_wallet_tx_status "
                "(waiting_funds: not fundable yet, shown as pending)",
            },
            "cc_state_reason": {
                "type": "string",
                "description": "extension: why the send waits (empty otherwise)",
            },
            "cold_statement": _ref("ColdStatement"),
        },
    },
    "ColdStatement": {
        "type": "object",
        "description": (
            "Our extension: the cold HSM's final word on a send, a signed message by its "
            "identity key over `CC:SEND_SIGNED:<account>:<txid>:<user_tx_no>` (state signed) "
            "or `CC:SEND_REFUSED:<account>:<code>:<user_tx_no>` (state refused: the cold HSM "
            "never signs this user_tx_no afterwards). Present once the send is OK or failed."
        ),
        "required": ["state", "signature"],
        "properties": {
            "state": {"type": "string", "enum": ["signed", "refused"]},
            "txid": TXID,
            "code": {"type": "integer"},
            "signature": {"type": "string"},
        },
    },
    "ColdStatementAnswer": {
        "type": "object",
        "required": ["user_tx_no", "cold_statement"],
        "properties": {
            "user_tx_no": {"type": "string"},
            "cold_statement": _ref("ColdStatement"),
        },
    },
}

# Every error answer: (HTTP status, response name, what it means).
ERROR_RESPONSES = [
    (400, "BadRequest", "invalid input (code 2), or a domain refusal"),
    (401, "Unauthorized", "missing or invalid token (code 4)"),
    (403, "Forbidden", "the token's scope does not allow this call (code 5)"),
    (404, "NotFound", "not found (code 6)"),
    (405, "MethodNotAllowed", "method not allowed (code 15)"),
    (409, "Conflict", "conflict with the current state"),
    (429, "RateLimited", "too many requests for this token (code 8)"),
    (500, "Internal", "internal error (code 1); nothing else is disclosed"),
    (502, "BadGateway", "the HSM refused, or its proof did not verify"),
    (503, "Unavailable", "the HSM could not be reached (code 13)"),
]
RESPONSES: dict[str, Any] = {
    name: _json(_ref("Error"), meaning) for _, name, meaning in ERROR_RESPONSES
}
_RESPONSE_OF = {status: name for status, name, _ in ERROR_RESPONSES}
# what any call may answer, whatever it does
COMMON_ERRORS = (401, 403, 404, 405, 429, 500)


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _err(_RESPONSE_OF[status]) for status in statuses}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    tag: str,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    errors: tuple[int, ...] = (),
    description: str = "",
) -> dict[str, Any]:
    """One operation: its 200 answer, the common errors and its own `errors` (HTTP statuses)."""
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {"200": ok, **_errors(*COMMON_ERRORS, *errors)},
    }
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {
            "required": True,
            "description": "form-encoded (the reference's) or a JSON object with the same fields",
            "content": {
                "application/x-www-form-urlencoded": {"schema": _ref(body)},
                "application/json": {"schema": _ref(body)},
            },
        }
    return op


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at `/api/v1/openapi.json`."""
    annotate(SCHEMAS)
    codes = error_codes()
    SCHEMAS["Error"]["properties"]["code"]["enum"] = [c["code"] for c in codes]
    SCHEMAS["Error"]["x-error-codes"] = codes
    batch_no = _path_param(
        "batch_no",
        {"type": "integer", "minimum": 0, "maximum": MAX_BATCH_NO},
        "batch n holds indices n*1000 .. n*1000+999",
    )
    batch_no["example"] = 0
    addr_list = {"type": "array", "items": _ref("IndexedAddress")}
    user_tx_no = _path_param("user_tx_no", {"type": "string", "minLength": 1, "maxLength": 64}, "")
    paths: dict[str, Any] = {
        "/time": {"get": _op("Server time (UTC)", _json(_ref("Time"), "the time"), tag="time")},
        "/user": {
            "get": _op(
                "The account, as seen from the token's side",
                _json(_ref("User"), "the account"),
                tag="user",
            )
        },
        "/address/batch/{batch_no}": {
            "get": _op(
                "An address batch (exactly 1000), created if it is the next one",
                _json(
                    {**addr_list, "minItems": 1000, "maxItems": 1000},
                    "the batch's addresses",
                ),
                tag="addresses",
                params=[batch_no],
                errors=(400, 502, 503),
                description=(
                    "A batch beyond the next is refused (400, code 10, the message names the "
                    "next batch). A new batch comes with the cold HSM's proof, verified before "
                    "it is stored; the V-device must verify it before its addresses are used."
                ),
            )
        },
        "/address/batch/{batch_no}/status": {
            "post": _op(
                "The V-device reports its verification of a batch (hot token)",
                _json(_ref("Result"), "recorded"),
                tag="addresses",
                params=[batch_no],
                body="BatchStatusForm",
                errors=(400, 409),
                description="A failed batch never hands out an address; the operator is alerted.",
            )
        },
        "/address/history/{path}": {
            "get": _op(
                "Addresses already handed out on a path, newest first (100 a page)",
                _json(addr_list, "the addresses"),
                tag="addresses",
                params=[
                    _path_param(
                        "path", {"type": "integer", "enum": [0, 1]}, "0 receiving, 1 change"
                    ),
                    _query_param(
                        "since_address",
                        {"type": "string"},
                        "continue after this address (older ones follow)",
                    ),
                ],
                errors=(400,),
            )
        },
        "/address/next": {
            "get": _op(
                "Hand out the next unused receiving address (from verified batches)",
                _json(_ref("IndexedAddress"), "the address"),
                tag="addresses",
                errors=(409,),
            )
        },
        "/tx": {
            "get": _op(
                "Transactions of the token's side, oldest first, 20 a page",
                _json({"type": "array", "items": _ref("Tx"), "maxItems": 20}, "a page"),
                tag="tx",
                params=[
                    _query_param(
                        "tx_hash", TXID, "start after this transaction (first page when absent)"
                    )
                ],
                errors=(400,),
            )
        },
        "/events": {
            "get": _op(
                "The token's side of the account's event log, oldest first (long polling)",
                _json(_ref("EventPage"), "events after `after`"),
                tag="events",
                params=[
                    _query_param(
                        "after",
                        {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                        "return events with seq above this (the last one processed); default 0",
                    ),
                    _query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500},
                        "at most this many events (default 100)",
                    ),
                    _query_param(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": 30},
                        "seconds to wait for a first event when there is none yet (default 0)",
                    ),
                ],
                errors=(400,),
                description=(
                    "Numbers (`seq`) run without gaps per account; a hot token sees hot and "
                    "account-wide events, a cold token cold and account-wide ones. Kinds: "
                    "deposit.seen/confirmed/final/replaced/conflicted/reorged/dropped, "
                    "send.accepted/waiting/signed/broadcast/replaced/confirmed/failed, "
                    "batch.verified/failed, account.frozen/unfrozen."
                ),
            )
        },
        "/tx/detail/{tx_hash}": {
            "get": _op(
                "One transaction",
                _json(_ref("Tx"), "the transaction"),
                tag="tx",
                params=[_path_param("tx_hash", TXID, "transaction id")],
                errors=(400,),
            )
        },
        "/tx/request": {
            "post": _op(
                "Request a hot send (hot token)",
                _json(_ref("Result"), "accepted"),
                tag="send",
                body="SendRequestForm",
                errors=(400, 409, 502, 503),
                description=(
                    "Code 3 (HTTP 400) means this user_tx_no was already accepted: a retry is "
                    "safe and creates nothing. A frozen account is refused (409, code 9). "
                    "vc_code is checked here, against the channel key the cold HSM vouches "
                    "for: a forgery is refused (400, code 40; an unknown channel code 41) and "
                    "freezes nothing. user_tx_no: 1-64 printable ASCII characters other than "
                    "space, '\"' and '\\'; no field may hold a control or bidi character."
                ),
            )
        },
        "/tx/{user_tx_no}": {
            "get": _op(
                "State of a hot send (hot token)",
                _json(_ref("SendState"), "the send"),
                tag="send",
                params=[user_tx_no],
                errors=(400,),
            )
        },
        "/tx/{user_tx_no}/statement": {
            "post": _op(
                "The cold HSM's signed final word on a send (hot token; our extension)",
                _json(_ref("ColdStatementAnswer"), "the statement"),
                tag="send",
                params=[user_tx_no],
                errors=(400, 409, 502, 503),
                description=(
                    "For a send that is OK or failed, the statement kept with it; 409 while it "
                    "is in progress. For a user_tx_no custody holds no send for (say, refused "
                    "at intake), the cold HSM closes it and answers 'refused'. A V-device "
                    "reports a send failed to its site only on a 'refused' statement."
                ),
            )
        },
    }
    annotate_params(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ChainCloud custody API",
            "version": VERSION,
            "description": (
                "The ChainCloud API (reference section 1) with our extensions. Every call "
                "carries the account token in the `token` header: a cold-receiving token "
                "reaches the cold side only, a hot-sending token the hot side."
            ),
        },
        "servers": [{"url": "/api/v1/open"}],
        "x-error-codes": codes,
        "security": [{"token": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "token"}},
        },
    }
