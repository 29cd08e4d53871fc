"""Builds the C extensions; everything else is in pyproject.toml.

- `wallet_core._batch_ec`: address batches (one field inversion per window for a whole batch).
- `custody.chain._blockscan`: the watcher's scan of raw blocks through its match filters.
"""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wallet_core._batch_ec",
            sources=["wallet_core/native/_batch_ec.c"],
            include_dirs=["wallet_core/native/secp256k1"],
            depends=sorted(glob("wallet_core/native/secp256k1/*.h")),
            extra_compile_args=["-O2", "-Wno-unused-function"],
        ),
        Extension(
            "custody.chain._blockscan",
            sources=["custody/chain/_blockscan.c"],
            libraries=["crypto"],  # OpenSSL's SHA-256 (libssl-dev to build)
            extra_compile_args=["-O2"],
        ),
    ]
)
