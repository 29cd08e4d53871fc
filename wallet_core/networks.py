"""The four bitcoin networks and their constants (prefixes, version bytes, coin types).

Everything network-specific lives here so that no other module compares magic bytes.
Signet shares testnet's prefixes: an address cannot tell the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class XkeyVersions:
    """Extended-key version bytes for one script family (public, private)."""

    public: bytes
    private: bytes


@dataclass(frozen=True)
class NetworkParams:
    """Constants of one network."""

    name: str
    hrp: str
    p2pkh_version: int
    p2sh_version: int
    wif_prefix: int
    coin_type: int
    # BIP32 (xpub/tpub), BIP49 (ypub/upub), BIP84 (zpub/vpub), multisig P2WSH (Zpub/Vpub)
    xkey: XkeyVersions
    ykey: XkeyVersions
    zkey: XkeyVersions
    zkey_multisig: XkeyVersions


_MAIN_X = XkeyVersions(bytes.fromhex("0488b21e"), bytes.fromhex("0488ade4"))
_MAIN_Y = XkeyVersions(bytes.fromhex("049d7cb2"), bytes.fromhex("049d7878"))
_MAIN_Z = XkeyVersions(bytes.fromhex("04b24746"), bytes.fromhex("04b2430c"))
_MAIN_ZM = XkeyVersions(bytes.fromhex("02aa7ed3"), bytes.fromhex("02aa7a99"))
_TEST_X = XkeyVersions(bytes.fromhex("043587cf"), bytes.fromhex("04358394"))
_TEST_Y = XkeyVersions(bytes.fromhex("044a5262"), bytes.fromhex("044a4e28"))
_TEST_Z = XkeyVersions(bytes.fromhex("045f1cf6"), bytes.fromhex("045f18bc"))
_TEST_ZM = XkeyVersions(bytes.fromhex("02575483"), bytes.fromhex("02575048"))


class Network(Enum):
    """A bitcoin network. `Network.from_name` accepts Bitcoin Core's chain names too."""

    MAINNET = "mainnet"
    TESTNET = "testnet"
    SIGNET = "signet"
    REGTEST = "regtest"

    @property
    def params(self) -> NetworkParams:
        return _PARAMS[self]

    @property
    def hrp(self) -> str:
        return _PARAMS[self].hrp

    @property
    def coin_type(self) -> int:
        return _PARAMS[self].coin_type

    @property
    def is_mainnet(self) -> bool:
        return self is Network.MAINNET

    @classmethod
    def from_name(cls, name: str) -> Network:
        """Map `main`/`bitcoin`/`mainnet`, `test`/`testnet`/`testnet3`, `signet`, `regtest`."""
        key = name.strip().lower()
        try:
            return _ALIASES[key]
        except KeyError:
            raise ValueError(f"unknown network {name!r}") from None


_PARAMS: dict[Network, NetworkParams] = {
    Network.MAINNET: NetworkParams(
        "mainnet", "bc", 0x00, 0x05, 0x80, 0, _MAIN_X, _MAIN_Y, _MAIN_Z, _MAIN_ZM
    ),
    Network.TESTNET: NetworkParams(
        "testnet", "tb", 0x6F, 0xC4, 0xEF, 1, _TEST_X, _TEST_Y, _TEST_Z, _TEST_ZM
    ),
    Network.SIGNET: NetworkParams(
        "signet", "tb", 0x6F, 0xC4, 0xEF, 1, _TEST_X, _TEST_Y, _TEST_Z, _TEST_ZM
    ),
    Network.REGTEST: NetworkParams(
        "regtest", "bcrt", 0x6F, 0xC4, 0xEF, 1, _TEST_X, _TEST_Y, _TEST_Z, _TEST_ZM
    ),
}

_ALIASES: dict[str, Network] = {
    "main": Network.MAINNET,
    "mainnet": Network.MAINNET,
    "bitcoin": Network.MAINNET,
    "test": Network.TESTNET,
    "testnet": Network.TESTNET,
    "testnet3": Network.TESTNET,
    "signet": Network.SIGNET,
    "regtest": Network.REGTEST,
}


def networks_for_hrp(hrp: str) -> list[Network]:
    """All networks using a bech32 human-readable part (tb is testnet and signet)."""
    return [n for n in Network if n.hrp == hrp]


def networks_for_base58_version(version: int) -> list[tuple[Network, str]]:
    """(network, "p2pkh"|"p2sh") pairs that use a base58 address version byte."""
    out: list[tuple[Network, str]] = []
    for n in Network:
        if n.params.p2pkh_version == version:
            out.append((n, "p2pkh"))
        elif n.params.p2sh_version == version:
            out.append((n, "p2sh"))
    return out


def describe_networks(nets: list[Network]) -> str:
    """Human wording for an error message: `testnet/signet`."""
    return "/".join(n.value for n in nets)


def xkey_versions_lookup() -> dict[bytes, tuple[list[Network], bool, str]]:
    """version bytes -> (networks, is_private, family) for every known extended-key version."""
    table: dict[bytes, tuple[list[Network], bool, str]] = {}
    for n in Network:
        p = n.params
        for family, v in (("x", p.xkey), ("y", p.ykey), ("z", p.zkey), ("Z", p.zkey_multisig)):
            for ver, priv in ((v.public, False), (v.private, True)):
                nets, _, _ = table.setdefault(ver, ([], priv, family))
                if n not in nets:
                    nets.append(n)
    return table
