"""Builds the one C extension (wallet_core._batch_ec); everything else is in pyproject.toml."""

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
        )
    ]
)
