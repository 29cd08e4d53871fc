"""Loading the PKCS#11 module: once per process, after SoftHSM's configuration is set.

A module can be initialised only once per process and SoftHSM reads `SOFTHSM2_CONF` at that
moment, so the loaded library is remembered with the configuration it was loaded under and a
request for another configuration is refused instead of silently using the wrong tokens.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pkcs11
from pkcs11._pkcs11 import lib as Pkcs11Lib  # `pkcs11.lib` is a loader function

from cc_common.token.errors import ModuleConflict, TokenError
from cc_common.token.softhsm import use_softhsm_conf

_loaded: dict[str, tuple[Pkcs11Lib, Path | None]] = {}
_load_lock = threading.Lock()


def load_module(module_path: Path, softhsm_conf: Path | None) -> Pkcs11Lib:
    """The PKCS#11 library at `module_path`, loaded under `softhsm_conf` (None: not SoftHSM)."""
    key = str(Path(module_path).resolve())
    conf = softhsm_conf.resolve() if softhsm_conf is not None else None
    with _load_lock:
        if key in _loaded:
            lib, loaded_conf = _loaded[key]
            if conf is not None and loaded_conf != conf:
                raise ModuleConflict(
                    f"{module_path} is already loaded in this process with {loaded_conf}; "
                    f"each HSM process uses one SoftHSM configuration, not {conf}"
                )
            return lib
        if not Path(module_path).is_file():
            raise TokenError(f"PKCS#11 module {module_path} does not exist")
        if conf is not None:
            use_softhsm_conf(conf)
        try:
            lib = pkcs11.lib(str(module_path))
        except pkcs11.PKCS11Error as exc:
            raise TokenError(
                f"cannot load PKCS#11 module {module_path}: {type(exc).__name__}"
            ) from exc
        _loaded[key] = (lib, conf)
        return lib
