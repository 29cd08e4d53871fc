# shellcheck shell=bash
# Shared setup of scripts/demo and scripts/test; source it, then call cc_setup.
#
# On a fresh Debian/Ubuntu machine: installs the missing system packages with apt-get when run
# as root (or prints exactly which to install and stops), finds Python >= 3.11 (with its C
# headers: the package builds two C extensions), creates .venv and installs the package with its
# dev extras, again only when pyproject.toml, setup.py or an extension's C sources changed (an
# editable install builds the extensions in place).

CC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CC_VENV="$CC_ROOT/.venv"
# build-essential and libssl-dev: the C extensions (libssl-dev: the block scan's SHA-256)
CC_SYSTEM_PACKAGES=(softhsm2 socat libsecp256k1-1 build-essential libssl-dev)

cc_log() { printf '==> %s\n' "$*" >&2; }
cc_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The first python3 on PATH that is >= 3.11 (newest first).
cc_find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

cc_apt_updated=""
cc_apt_install() {
    cc_log "installing system packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$cc_apt_updated" ]; then
        apt-get update -qq || return 1
        cc_apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Install (as root) or name (otherwise) the Debian packages that are missing.
cc_ensure_packages() {
    local missing=() pkg
    if ! command -v dpkg >/dev/null 2>&1; then
        cc_log "no dpkg here: make sure these are installed: ${CC_SYSTEM_PACKAGES[*]} and Python >= 3.11 with venv"
        return 0
    fi
    for pkg in "${CC_SYSTEM_PACKAGES[@]}" "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        cc_apt_install "${missing[@]}" || cc_die "apt-get install ${missing[*]} failed"
    else
        printf 'missing system packages: %s\n' "${missing[*]}" >&2
        printf 'install them with:\n    sudo apt-get update && sudo apt-get install -y %s\n' \
            "${missing[*]}" >&2
        printf 'then run %s again\n' "$0" >&2
        exit 1
    fi
}

cc_ensure_python() {
    CC_PYTHON="$(cc_find_python)" || {
        # Debian 12 ships 3.11 as python3; Ubuntu 22.04 has it as the package python3.11.
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            cc_apt_install python3.11 python3.11-venv || cc_apt_install python3 python3-venv || true
        fi
        CC_PYTHON="$(cc_find_python)" ||
            cc_die "Python >= 3.11 is needed: sudo apt-get install -y python3.11 python3.11-venv"
    }
    # A Debian python without ensurepip cannot make a venv: it needs pythonX.Y-venv.
    if [ ! -x "$CC_VENV/bin/python" ] && ! "$CC_PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        local version
        version="$("$CC_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        cc_ensure_packages "python${version}-venv"
    fi
    # setup.py compiles wallet_core/native/_batch_ec.c against Python.h
    if ! "$CC_PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        local version
        version="$("$CC_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        cc_ensure_packages "python${version}-dev"
    fi
}

# What the installed package was built from: pyproject.toml, setup.py and the C sources.
cc_install_stamp() {
    (
        cd "$CC_ROOT" &&
            sha256sum pyproject.toml setup.py wallet_core/native/*.c \
                wallet_core/native/secp256k1/* custody/chain/_blockscan.c
    ) | sha256sum | cut -d' ' -f1
}

cc_ensure_venv() {
    if [ ! -x "$CC_VENV/bin/python" ]; then
        cc_log "creating $CC_VENV with $CC_PYTHON"
        "$CC_PYTHON" -m venv "$CC_VENV" || cc_die "could not create $CC_VENV"
    fi
    local stamp="$CC_VENV/.cc-installed" want
    want="$(cc_install_stamp)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$CC_VENV/bin/custody" ] ||
        ! compgen -G "$CC_ROOT/wallet_core/_batch_ec*.so" >/dev/null ||
        ! compgen -G "$CC_ROOT/custody/chain/_blockscan*.so" >/dev/null; then
        cc_log "installing the package and its dev extras into .venv (pyproject.toml, setup.py or the C extension changed)"
        local log="$CC_VENV/.cc-install.log"
        if ! "$CC_VENV/bin/python" -m pip install --disable-pip-version-check \
            -e "$CC_ROOT[dev]" >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            cc_die "pip install -e '.[dev]' failed (full output: $log)"
        fi
        printf '%s\n' "$want" >"$stamp"
    fi
    export PATH="$CC_VENV/bin:$PATH"
    export VIRTUAL_ENV="$CC_VENV"
}

cc_setup() {
    cc_ensure_packages
    cc_ensure_python
    cc_ensure_venv
    cd "$CC_ROOT" || exit 1
}
