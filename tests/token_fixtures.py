"""A SoftHSM token in its own OS process, driven by the tests over stdin/stdout.

SoftHSM reads `SOFTHSM2_CONF` once per process, and login is per token, so each test token
runs in a worker process of its own (as each HSM does in production): `TokenWorker` starts
`python -m tests.token_fixtures`, sends one JSON request per line and gets one JSON answer.
A token error in the worker is raised again in the test as the same `cc_common.token` class.
The worker's stderr (its log, at DEBUG) is kept in a file so tests can check it for PINs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import coincurve
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11

from cc_common import token as token_pkg
from cc_common.config import Section
from cc_common.deployment import find_softhsm_module

ROOT = Path(__file__).resolve().parent.parent


def hsm_section(base: Path, name: str, label: str, *, limit: int = 5) -> dict[str, Any]:
    """An `[hsm_*]` section for a token under `base/name` with fresh test PINs."""
    return {
        "pkcs11_module": find_softhsm_module(),
        "softhsm_conf": f"{name}/softhsm2.conf",
        "token_dir": f"{name}/tokens",
        "token_label": label,
        "so_pin": f"so-{name}-pin-7f3a9c",
        "user_pin": f"user-{name}-pin-4e1b2d",
        "pin_retry_limit": limit,
    }


class RemoteError(Exception):
    """A worker failure that is not one of our token errors (a bug in a test op)."""


class TokenWorker:
    """The test side of a worker process."""

    def __init__(self, data_dir: Path, section: dict[str, Any], log_path: Path) -> None:
        self.section = section
        self.log_path = log_path
        self._log = log_path.open("wb")
        config = json.dumps({"data_dir": str(data_dir), "section": section})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.token_fixtures", config],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )

    def call(self, op: str, *args: Any, timeout: float = 120.0) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": [_enc(a) for a in args]}) + "\n")
        self.proc.stdin.flush()
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(timeout)
        if not answer or not answer[0]:
            raise RemoteError(f"worker gave no answer to {op} (exit {self.proc.poll()})")
        reply = json.loads(answer[0])
        if "error" in reply:
            cls = getattr(token_pkg, reply["error"], None)
            if isinstance(cls, type) and issubclass(cls, token_pkg.TokenError):
                raise cls(reply["message"])
            raise RemoteError(f"{reply['error']}: {reply['message']}")
        return _dec(reply["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _enc(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [_enc(v) for v in value]
    if isinstance(value, dict):
        return {k: _enc(v) for k, v in value.items()}
    if isinstance(value, token_pkg.Provisioned):
        return value.value
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"hex"}:
            return bytes.fromhex(value["hex"])
        return {k: _dec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


# ---- the worker side: runs in its own process; the only place the module is loaded ----

OPS: dict[str, Callable[..., Any]] = {}


def op(fn: Callable[..., Any]) -> Callable[..., Any]:
    OPS[fn.__name__] = fn
    return fn


class _Worker:
    def __init__(self, data_dir: Path, section: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.values = dict(section)
        self.token: token_pkg.HsmToken | None = None

    def section(self, **overrides: Any) -> Section:
        return Section("hsm_test", {**self.values, **overrides}, self.data_dir)

    @property
    def t(self) -> token_pkg.HsmToken:
        if self.token is None:
            raise RuntimeError("token not open")
        return self.token


@op
def init(w: _Worker) -> str:
    return token_pkg.HsmToken.init(w.section()).value


@op
def open_token(w: _Worker, user_pin: str | None = None) -> bool:
    overrides = {} if user_pin is None else {"user_pin": user_pin}
    token = token_pkg.HsmToken.open(w.section(**overrides))
    if w.token is None:
        w.token = token
    else:
        token.close()
    return True


@op
def try_login(w: _Worker, user_pin: str) -> bool:
    """Open and close again (a process start with this PIN)."""
    token_pkg.HsmToken.open(w.section(user_pin=user_pin)).close()
    return True


@op
def close_token(w: _Worker) -> bool:
    if w.token is not None:
        w.token.close()
        w.token = None
    return True


@op
def reset_pin_lock(w: _Worker, so_pin: str) -> bool:
    token_pkg.HsmToken.reset_pin_lock(w.section(), so_pin)
    return True


@op
def pin_state(w: _Worker) -> dict[str, int]:
    state = token_pkg.HsmToken.pin_state(w.section())
    return {"user": state.user_failures, "so": state.so_failures}


@op
def open_other_conf(w: _Worker) -> bool:
    """Open a token of another SoftHSM store in this process (must be refused)."""
    token_pkg.HsmToken.open(
        w.section(softhsm_conf="elsewhere/softhsm2.conf", token_label="elsewhere")
    )
    return True


@op
def generate_signing_key(w: _Worker, label: str) -> bytes:
    return w.t.keys.generate_signing_key(label)


@op
def public_key(w: _Worker, label: str) -> bytes:
    return w.t.keys.public_key(label)


@op
def public_key_uncached(w: _Worker, label: str) -> bytes:
    w.t.keys.forget_handles()
    return w.t.keys.public_key(label)


@op
def sign_digest(w: _Worker, label: str, digest: bytes) -> bytes:
    return w.t.keys.sign_digest(label, digest)


@op
def sign_many(w: _Worker, label: str, digests: list[bytes]) -> dict[str, Any]:
    start = time.perf_counter()
    sigs = [w.t.keys.sign_digest(label, d) for d in digests]
    return {"sigs": sigs, "seconds": time.perf_counter() - start}


@op
def sign_recoverable(w: _Worker, label: str, digest: bytes) -> bytes:
    return w.t.keys.sign_recoverable(label, digest)


@op
def sign_with_wrong_public_key(w: _Worker, label: str, other: str, digest: bytes) -> bytes:
    """Poison the handle cache so `label`'s signatures are checked against `other`'s key."""

    keys = w.t.keys
    keys.public_key(label)
    wrong = dataclasses.replace(keys._cache[label], public=keys.public_key(other))
    keys._cache[label] = wrong
    try:
        return keys.sign_digest(label, digest)
    finally:
        keys.forget_handles()


@op
def sign_concurrently(w: _Worker, label: str, threads: int, per_thread: int) -> dict[str, Any]:
    """Sign from several threads at once; report failures by class name, and the rate."""

    pub = coincurve.PublicKey(w.t.keys.public_key(label))

    def worker(n: int) -> list[str]:
        failures = []
        for i in range(per_thread):
            digest = hashlib.sha256(f"{n}/{i}".encode()).digest()
            try:
                der = w.t.keys.sign_digest(label, digest)
                if not pub.verify(der, digest, hasher=None):
                    failures.append("BadSignature")
            except Exception as exc:
                failures.append(type(exc).__name__)
        return failures

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(worker, range(threads)))
    seconds = time.perf_counter() - start
    return {"failures": [f for r in results for f in r], "seconds": seconds}


@op
def probe_private_key(w: _Worker, label: str) -> dict[str, Any]:
    """Try to read and unprotect a signing key through raw PKCS#11 (what an attacker with the
    logged-in session could try); report what the token answered."""

    return _probe(w, label, ObjectClass.PRIVATE_KEY, KeyType.EC, Attribute)


@op
def probe_secret_key(w: _Worker, label: str) -> dict[str, Any]:

    return _probe(w, label, ObjectClass.SECRET_KEY, KeyType.AES, Attribute)


def _probe(w: _Worker, label: str, cls: Any, key_type: Any, attr: Any) -> dict[str, Any]:

    report: dict[str, Any] = {}
    with w.t.session.operation("probe") as s:
        key = s.get_key(object_class=cls, key_type=key_type, label=label)
        for name in ("SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE", "TOKEN"):
            report[name.lower()] = bool(key[getattr(attr, name)])
        try:
            value = key[attr.VALUE]
            report["value"] = f"READ {len(value)} bytes"
        except p11.PKCS11Error as exc:
            report["value"] = type(exc).__name__
        for name, new in (("EXTRACTABLE", True), ("SENSITIVE", False)):
            try:
                key[getattr(attr, name)] = new
                report[f"set_{name.lower()}"] = "CHANGED"
            except p11.PKCS11Error as exc:
                report[f"set_{name.lower()}"] = type(exc).__name__
        report["still_sensitive"] = bool(key[attr.SENSITIVE])
        report["still_unextractable"] = not bool(key[attr.EXTRACTABLE])
    return report


@op
def ensure_wrapping_key(w: _Worker, label: str) -> str:
    return w.t.seals.ensure_wrapping_key(label).value


@op
def encrypt(w: _Worker, label: str, plaintext: bytes, aad: bytes) -> bytes:
    return w.t.seals.encrypt(label, plaintext, aad)


@op
def decrypt(w: _Worker, label: str, blob: bytes, aad: bytes) -> bytes:
    return w.t.seals.decrypt(label, blob, aad)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    cfg = json.loads(argv[0])
    worker = _Worker(Path(cfg["data_dir"]), cfg["section"])
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = OPS[request["op"]](worker, *_dec(request["args"]))
            reply: dict[str, Any] = {"result": _enc(result)}
        except Exception as exc:
            logging.getLogger("worker").debug("op %s failed: %r", request["op"], exc)
            reply = {"error": type(exc).__name__, "message": str(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if worker.token is not None:
        worker.token.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
