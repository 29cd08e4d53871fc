"""Builds the C extensions; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "custody.chain._blockscan",
            sources=["custody/chain/_blockscan.c"],
            libraries=["crypto"],  # OpenSSL's SHA-256 (libssl-dev to build)
            extra_compile_args=["-O2"],
        ),
    ]
)
