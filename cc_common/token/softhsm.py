"""SoftHSM2 specifics: a private configuration per HSM process and token initialisation.

SoftHSM finds its tokens through the file named by `SOFTHSM2_CONF`, read once when the module
is initialised. Each HSM process (hot, cold) therefore has its own configuration file and its
own token directory, and sets `SOFTHSM2_CONF` for itself before loading the module
(`use_softhsm_conf`, the one place that touches `os.environ` for it). python-pkcs11 cannot
initialise a token, so `softhsm2-util` does it.
"""

from __future__ import annotations

import logging
import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

from cc_common.token.errors import TokenInitFailed
from cc_common.token.types import Provisioned

log = logging.getLogger(__name__)

SOFTHSM_ENV = "SOFTHSM2_CONF"
SOFTHSM_UTIL = "softhsm2-util"
INIT_TIMEOUT_S = 30.0


def softhsm_conf_text(token_dir: Path) -> str:
    """The configuration of a private SoftHSM store: file backend, errors only in syslog."""
    return (
        "# Written by cc_common.token.softhsm: private to one HSM process.\n"
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )


def write_softhsm_conf(conf_path: Path, token_dir: Path) -> None:
    """Write `conf_path` (0600) and create `token_dir` (0700) if missing."""
    token_dir = token_dir.resolve()
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = softhsm_conf_text(token_dir)
    if conf_path.is_file() and conf_path.read_text(encoding="utf-8") == text:
        return
    tmp = conf_path.with_name(conf_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o600)
    os.replace(tmp, conf_path)


def use_softhsm_conf(conf_path: Path) -> None:
    """Point this process's SoftHSM at `conf_path`; call before the module is loaded.

    SoftHSM reads the variable once, at `C_Initialize`, so a later change has no effect: the
    module loader (`library.load_module`) calls this first and refuses a second, different conf.
    """
    os.environ[SOFTHSM_ENV] = str(conf_path.resolve())


def _util_env(conf_path: Path) -> dict[str, str]:
    """The environment of a `softhsm2-util` child: ours plus its own conf (ours untouched)."""
    env = dict(os.environ)
    env[SOFTHSM_ENV] = str(conf_path.resolve())
    return env


def _util() -> str:
    path = shutil.which(SOFTHSM_UTIL)
    if path is None:
        raise TokenInitFailed(f"{SOFTHSM_UTIL} is not installed (Debian package softhsm2)")
    return path


def token_labels(conf_path: Path) -> list[str]:
    """Labels of the initialised tokens in the store `conf_path` points at."""
    out = subprocess.run(
        [_util(), "--show-slots"],
        env=_util_env(conf_path),
        capture_output=True,
        text=True,
        timeout=INIT_TIMEOUT_S,
        check=False,
    )
    if out.returncode != 0:
        raise TokenInitFailed(f"{SOFTHSM_UTIL} --show-slots failed: {out.stderr.strip()[:300]}")
    labels: list[str] = []
    initialised = False
    for line in out.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Initialized":
            initialised = value.strip() == "yes"
        elif key == "Label" and initialised:
            labels.append(value.strip())
    return labels


def init_softhsm_token(
    module_path: Path,
    conf_path: Path,
    token_dir: Path,
    label: str,
    so_pin: str,
    user_pin: str,
) -> Provisioned:
    """Create the token `label` in a private store, or do nothing if it already exists.

    The PINs never appear on `softhsm2-util`'s argv (where `ps` would show them), in a log or
    in an exception: the tool is run on a pseudo-terminal and answers its PIN prompts, as an
    operator would. Its output only echoes `*`, and is scrubbed of the PINs anyway.
    `module_path` is checked to exist so a broken deployment fails here, not at first use.
    """
    if not Path(module_path).is_file():
        raise TokenInitFailed(f"PKCS#11 module {module_path} does not exist")
    for name, pin in (("SO PIN", so_pin), ("user PIN", user_pin)):
        if not 4 <= len(pin) <= 255 or "\n" in pin or "\r" in pin:
            raise TokenInitFailed(f"the {name} must be 4-255 characters on one line")
    write_softhsm_conf(conf_path, token_dir)
    if label in token_labels(conf_path):
        log.info("token %r already exists in %s; nothing to do", label, token_dir)
        return Provisioned.ALREADY_PRESENT
    output, rc = _run_with_prompts(
        [_util(), "--init-token", "--free", "--label", label],
        _util_env(conf_path),
        {"SO PIN:": so_pin, "user PIN:": user_pin},
    )
    for pin in (so_pin, user_pin):
        output = output.replace(pin, "***")
    if rc != 0 or label not in token_labels(conf_path):
        raise TokenInitFailed(f"{SOFTHSM_UTIL} --init-token failed (exit {rc}): {output[-300:]}")
    log.info("token %r initialised in %s", label, token_dir)
    return Provisioned.CREATED


def _run_with_prompts(
    argv: list[str], env: dict[str, str], answers: dict[str, str]
) -> tuple[str, int]:
    """Run `argv` on a pseudo-terminal, answering each prompt ending in a key of `answers`.

    Returns the output (prompts and asterisks) and the exit status.
    """
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    output = ""
    pending = ""
    deadline = time.monotonic() + INIT_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096).decode("utf-8", "replace")
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            pending += chunk
            for prompt, answer in answers.items():
                if pending.rstrip().endswith(prompt):
                    os.write(master, answer.encode("utf-8") + b"\n")
                    pending = ""
                    break
        else:
            proc.kill()
            raise TokenInitFailed(f"{argv[0]} did not finish within {INIT_TIMEOUT_S:.0f} s")
        return output, proc.wait(timeout=INIT_TIMEOUT_S)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
