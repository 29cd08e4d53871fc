"""Secrets per machine role: each role's file holds everything its process reads and nothing
else, no secret of one role is in another's file (nor in the supervisor's map), every file is
0600 from its creation and every directory 0700, a setting reaches every file that holds it,
every peer key a package reads is in its role's file, and a process started as a role reads
its own file alone: the real firmware-sim, cold HSM, hot HSM, custody API, V-device and
merchant site run together, each on a data directory holding its own file only."""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import requests

from cc_common.config import ALL_ROLES, CONFIG_FILENAME, ROLES, load_config
from cc_common.config_urls import URL_SOURCES
from cc_common.config_write import write_settings
from cc_common.deployment import init_deployment
from cc_common.errors import ConfigError
from cc_common.process import read_ready
from cc_common.roles import ROLE_SECRETS, ROLE_TABLES, SECRET_KEYS
from custody.cli import main as custody_main
from custody.hsm_client import HotHsmClient
from tests.harness import wait_until
from wallet_core.bip32 import ExtendedKey
from wallet_core.descriptors import wpkh_descriptor
from wallet_core.networks import Network
from wallet_core.wallets import AccountKey, bip84_account_path

# What each machine reads, written out (not derived from cc_common.roles, which it checks):
# its own tables whole, and of a peer's table only the keys that reach that peer.
WHOLE = "*"
EXPECTED_TABLES: dict[str, dict[str, str | set[str]]] = {
    "custody": {
        "deployment": WHOLE,
        "custody": WHOLE,
        "operator": WHOLE,
        "node": WHOLE,
        "twilio": WHOLE,
        "phones": {"operator"},
        "hsm_hot": {"rpc_host", "rpc_port", "rpc_secret"},
        "hsm_cold": {"numbers"},
    },
    "hsm-hot": {"deployment": WHOLE, "hsm_hot": WHOLE, "serial": {"hot_port", "baud"}},
    "hsm-cold": {
        "deployment": WHOLE,
        "hsm_cold": WHOLE,
        "serial": {"cold_port", "baud"},
        "phones": {"operator"},
    },
    "vdevice": {
        "deployment": WHOLE,
        "vdevice": WHOLE,
        "phones": {"owner"},
        "merchant_site": {"host", "port"},
    },
    "merchant-site": {"deployment": WHOLE, "merchant_site": WHOLE, "custody": {"host", "port"}},
    "firmware-sim": {"deployment": WHOLE, "firmware_sim": WHOLE},
}
EXPECTED_SECRETS = {
    "custody": {
        "custody.secret_key",
        "custody.database_url",
        "operator.token",
        "hsm_hot.rpc_secret",
        "twilio.account_sid",
        "twilio.auth_token",
        "node.rpc_user",
        "node.rpc_password",
    },
    "hsm-hot": {"hsm_hot.so_pin", "hsm_hot.user_pin", "hsm_hot.rpc_secret"},
    "hsm-cold": {"hsm_cold.so_pin", "hsm_cold.user_pin"},
    "vdevice": {"vdevice.vtest_password", "vdevice.merchant_token"},
    "merchant-site": {
        "merchant_site.vtest_password",
        "merchant_site.vdevice_token",
        "merchant_site.database_url",
    },
    "firmware-sim": {
        "firmware_sim.twilio_gateway.account_sid",
        "firmware_sim.twilio_gateway.auth_token",
        "firmware_sim.node.rpc_user",
        "firmware_sim.node.rpc_password",
    },
}
# The secrets two roles share by design (the two ends of one link), and no third role has.
PAIRS = (
    {"custody", "hsm-hot"},  # the hot HSM's RPC secret
    {"merchant-site", "vdevice"},  # the vtest password and the site's header token
    {"custody", "firmware-sim"},  # the node's RPC login and Twilio's (the simulated world)
)


# Each package's processes run as this role; the supervisor's code reads the map instead.
PACKAGE_ROLES = {
    "custody": "custody",
    "hsm_hot": "hsm-hot",
    "hsm_cold": "hsm-cold",
    "vdevice": "vdevice",
    "firmware_sim": "firmware-sim",
    "examples/merchant_site": "merchant-site",
}
READS_THE_MAP = ("custody/supervisor/", "custody/supervisor_cli.py")
SECTION_CALL = re.compile(r"config\.(?:has_)?section\(\s*\"([a-z_]+)[a-z_.]*\"")


def _leaves(table: dict[str, Any], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _only(data_dir: Path, role: str) -> None:
    """Leave `role`'s file alone in `data_dir`: as on that role's own machine."""
    for path in [data_dir / CONFIG_FILENAME, *(data_dir / f"{r}.toml" for r in ROLES)]:
        if path.name != f"{role}.toml":
            path.unlink()


@pytest.fixture
def deployment_dir(tmp_path: Path) -> Path:
    init_deployment(tmp_path / "d")
    return tmp_path / "d"


def test_each_role_file_holds_what_its_process_reads_and_nothing_else(
    deployment_dir: Path,
) -> None:
    everything = _read(deployment_dir / CONFIG_FILENAME)
    for role in ROLES:
        held = _read(deployment_dir / f"{role}.toml")
        assert set(held) == set(EXPECTED_TABLES[role]), role
        for table, keys in EXPECTED_TABLES[role].items():
            if keys == WHOLE:  # the whole table: every key the map has, secrets besides
                assert set(everything[table]) <= set(held[table]), (role, table)
            else:
                assert set(held[table]) == keys, (role, table)


def test_every_table_a_process_reads_is_in_its_roles_file() -> None:
    """A table read by a package but missing from its role's file would reach no process:
    `config.section("...")` in the code against `cc_common.roles.ROLE_TABLES`."""
    root = Path(__file__).resolve().parent.parent
    missing = []
    for package, role in PACKAGE_ROLES.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(READS_THE_MAP):
                continue
            for table in SECTION_CALL.findall(path.read_text()):
                if table not in ROLE_TABLES[role]:
                    missing.append(f"{rel} reads [{table}], not in {role}'s file")
    assert not missing, "\n".join(missing)


# `.str("key")` and the other `Section` accessors whose first argument names a key.
ACCESSORS = frozenset(
    {"str", "int", "float", "bool", "list", "path", "port_url", "secret", "has", "section"}
)
# Peer keys read only as a fall-back the role's own file makes dead: the V-device's file holds
# its own copy of the secrets it shares with the site, in [vdevice] (`vdevice.settings`).
FALLBACKS = {
    ("vdevice", "merchant_site", "vdevice_token"),
    ("vdevice", "merchant_site", "vtest_password"),
}


# Keys of a peer's table named at run time: (file, table, <expression>) -> the keys it can be.
COMPUTED = {
    ("custody/hsm_client.py", "hsm_hot", "<timeout_key>"): ("rpc_timeout", "api_hsm_timeout"),
}


def _is_config(node: ast.AST) -> bool:
    """`config`, `cfg`, `self.config`, `config_from_args(args)`: a whole `Config`."""
    if isinstance(node, ast.Name):
        return node.id.endswith(("config", "cfg"))
    if isinstance(node, ast.Attribute):
        return node.attr.endswith(("config", "cfg"))
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and (node.func.id.startswith(("config", "load_config")))
    )


def _section_table(node: ast.AST, names: dict[str, str]) -> str | None:
    """The top-level table a `.section("X")` call opens: `X`'s first part on a `Config`, the
    table a name already holds on a `Section` of it (a nested table of the same one)."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("section", "has_section")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return None
    receiver = node.func.value
    if isinstance(receiver, ast.Name) and receiver.id in names:
        return names[receiver.id]
    return node.args[0].value.split(".")[0] if _is_config(receiver) else None


def key_reads(source: str) -> set[tuple[str, str, int]]:
    """Every `(table, key, line)` that `source` reads: `config.section("T").str("k")`, or
    `s = config.section("T")` and then `s.int("k")` in the same function."""
    out = set()
    tree = ast.parse(source)
    for scope in ast.walk(tree):
        if not isinstance(scope, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        nodes = list(ast.walk(scope))
        names: dict[str, str] = {}
        for node in nodes:
            if isinstance(node, ast.Assign) and [type(t) for t in node.targets] == [ast.Name]:
                found = (_section_table(n, names) for n in ast.walk(node.value))
                tables = {t for t in found if t}
                if len(tables) == 1:
                    names[node.targets[0].id] = tables.pop()  # type: ignore[attr-defined]
        for node in nodes:
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ACCESSORS
                and node.args
            ):
                continue
            receiver = node.func.value
            table = _section_table(receiver, names) or (
                names.get(receiver.id) if isinstance(receiver, ast.Name) else None
            )
            arg = node.args[0]
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            if table:  # a key computed at run time is shown as <its expression>
                key = arg.value if literal else f"<{ast.unparse(arg)}>"  # type: ignore[attr-defined]
                out.add((table, key, node.lineno))
    return out


def test_key_reads_finds_chained_and_named_sections() -> None:
    source = (
        "def f(config, args):\n"
        "    s = config.section('hsm_hot')\n"
        "    n = s.section('nested')\n"
        "    yield config.section('custody').int('port'), s.str('rpc_port'), n.str('deep')\n"
        "    yield config_from_args(args).section('phones').str('owner'), s.int(which)\n"
    )
    assert {(t, k) for t, k, _ in key_reads(source)} == {
        ("custody", "port"),
        ("hsm_hot", "rpc_port"),
        ("hsm_hot", "nested"),  # a nested table is a key of its table too
        ("hsm_hot", "deep"),
        ("phones", "owner"),
        ("hsm_hot", "<which>"),
    }


def test_every_peer_key_a_process_reads_is_in_its_roles_file() -> None:
    """Of a peer's table a role's file holds a few keys only (`ROLE_TABLES`): a key read from
    it that is not listed there reaches no process started as that role."""
    root = Path(__file__).resolve().parent.parent
    missing = []
    for package, role in PACKAGE_ROLES.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(READS_THE_MAP):
                continue
            for table, key, line in sorted(key_reads(path.read_text())):
                keys = ROLE_TABLES[role].get(table)
                if keys is None or (role, table, key) in FALLBACKS:
                    continue  # a whole table (or none: the table test says so)
                if set(COMPUTED.get((rel, table, key), {key})) <= set(keys):
                    continue
                where = f"ROLE_TABLES[{role!r}][{table!r}] in cc_common/roles.py"
                if key.startswith("<"):  # computed: which keys can it be?
                    where = f"COMPUTED here (the keys it can be), and each of them to {where}"
                missing.append(
                    f"{rel}:{line} reads [{table}] {key}, not in {role}'s file: add it to {where}"
                )
    assert not missing, "\n".join(missing)


def test_every_table_of_the_map_is_some_roles(deployment_dir: Path) -> None:
    """A table `custody init` writes that no role holds would reach no process."""
    held = {t for role in ROLES for t in _read(deployment_dir / f"{role}.toml")}
    assert set(_read(deployment_dir / CONFIG_FILENAME)) == held


def test_each_secret_is_in_its_roles_files_only(deployment_dir: Path) -> None:
    assert {r: {f"{s}.{k}" for s, k in keys} for r, keys in ROLE_SECRETS.items()} == (
        EXPECTED_SECRETS
    )
    texts = {r: (deployment_dir / f"{r}.toml").read_text() for r in ROLES}
    shared_map = (deployment_dir / CONFIG_FILENAME).read_text()
    for role in ROLES:
        leaves = _leaves(tomllib.loads(texts[role]))
        secrets = {k for k in leaves if tuple(k.rsplit(".", 1)) in SECRET_KEYS}
        assert secrets == EXPECTED_SECRETS[role], role
        for name in secrets:
            value = str(leaves[name])
            assert value not in shared_map, name
            holders = {r for r, text in texts.items() if value in text}
            assert holders == {role} or holders in PAIRS, (name, holders)


def test_modes_from_the_start(deployment_dir: Path) -> None:
    for path in [deployment_dir / CONFIG_FILENAME, *deployment_dir.glob("*.toml")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for sub in (deployment_dir, *(p for p in deployment_dir.iterdir() if p.is_dir())):
        assert stat.S_IMODE(sub.stat().st_mode) == 0o700, sub
    assert not list(deployment_dir.glob(".*.tmp"))


def test_a_role_reads_its_own_file_alone(deployment_dir: Path) -> None:
    cold = load_config(deployment_dir, environ={}, role="hsm-cold")
    assert cold.path == deployment_dir / "hsm-cold.toml"
    assert cold.section("hsm_cold").secret("user_pin")
    for table in ("hsm_hot", "merchant_site", "custody", "vdevice", "firmware_sim"):
        assert not cold.has_section(table), table
    phone = load_config(deployment_dir, environ={}, role="vdevice")
    everyone = load_config(deployment_dir, environ={}, role=ALL_ROLES)
    site_password = everyone.section("merchant_site").secret("vtest_password")
    assert phone.section("vdevice").secret("vtest_password") == site_password
    assert not phone.section("merchant_site").has("vtest_password")
    hot = load_config(deployment_dir, environ={}, role="hsm-hot")
    assert hot.section("hsm_hot").secret("rpc_secret") == everyone.section("hsm_hot").secret(
        "rpc_secret"
    )
    assert not hot.has_section("hsm_cold")
    assert not load_config(deployment_dir, environ={}).section("hsm_cold").has("user_pin")
    _only(deployment_dir, "hsm-cold")
    assert load_config(deployment_dir, environ={}, role="hsm-cold").raw == cold.raw
    with pytest.raises(ConfigError, match=r"custody\.toml \(the custody machine's own file\)"):
        load_config(deployment_dir, environ={}, role="custody")


def test_env_overrides_still_win(deployment_dir: Path) -> None:
    cfg = load_config(
        deployment_dir, environ={"CC__HSM_COLD__USER_PIN": "from-the-env-123"}, role="hsm-cold"
    )
    assert cfg.section("hsm_cold").secret("user_pin") == "from-the-env-123"


def test_a_setting_reaches_every_file_that_holds_it_and_no_other(deployment_dir: Path) -> None:
    before = {p.name: p.read_text() for p in deployment_dir.glob("*.toml")}
    written = write_settings(
        deployment_dir,
        {"hsm_hot": {"rpc_port": 20999, "max_send_sat": 7, "user_pin": "new-user-pin-1"}},
    )
    assert sorted(p.name for p in written) == [CONFIG_FILENAME, "custody.toml", "hsm-hot.toml"]
    hot, custody = (_read(deployment_dir / f"{r}.toml")["hsm_hot"] for r in ("hsm-hot", "custody"))
    assert (hot["rpc_port"], hot["max_send_sat"], hot["user_pin"]) == (20999, 7, "new-user-pin-1")
    assert custody["rpc_port"] == 20999 and "max_send_sat" not in custody
    assert "user_pin" not in custody
    shared = _read(deployment_dir / CONFIG_FILENAME)["hsm_hot"]
    assert shared["rpc_port"] == 20999 and "user_pin" not in shared  # no secret in the map
    for name, text in before.items():
        path = deployment_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        if path not in written:
            assert path.read_text() == text, name
        else:
            assert path.read_text().startswith("# ChainCloud"), "the header is kept"
    with pytest.raises(ConfigError, match=r"no process reads \[nowhere\]"):
        write_settings(deployment_dir, {"nowhere": {"x": 1}})
    # a key edited in the map alone reaches no process: each reads its own file
    path = deployment_dir / CONFIG_FILENAME
    path.write_text(path.read_text().replace("max_send_sat = 7", "max_send_sat = 8"))
    hot_view = load_config(deployment_dir, environ={}, role="hsm-hot").section("hsm_hot")
    assert hot_view.int("max_send_sat") == 7


def test_custody_config_set(
    deployment_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = str(deployment_dir)
    assert custody_main(["config", "set", "merchant_site.port", "20777", "--dir", d]) == 0
    out = capsys.readouterr().out
    assert "[merchant_site] port written to" in out and "vdevice.toml" in out
    for role in ("vdevice", "merchant-site"):
        assert _read(deployment_dir / f"{role}.toml")["merchant_site"]["port"] == 20777
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-password-1\n"))
    assert custody_main(["config", "set", "node.rpc_password", "-", "--dir", d]) == 0
    assert "a-new-password-1" not in capsys.readouterr().out
    assert _read(deployment_dir / "custody.toml")["node"]["rpc_password"] == "a-new-password-1"
    assert "a-new-password-1" not in (deployment_dir / CONFIG_FILENAME).read_text()
    before = {p.name: p.read_text() for p in deployment_dir.glob("*.toml")}
    assert custody_main(["config", "set", "hsm_hot.max_send_sat", "lots", "--dir", d]) == 2
    assert "must be an integer, got 'lots'" in capsys.readouterr().err
    assert custody_main(["config", "set", "max_send_sat", "1", "--dir", d]) == 2
    assert "must look like section.key" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in deployment_dir.glob("*.toml")} == before


def test_every_url_init_builds_follows_its_port(deployment_dir: Path) -> None:
    """A new URL `custody init` builds from a port, unknown to `URL_SOURCES`, would keep the
    old port after `custody config set`."""
    followed = {url for urls in URL_SOURCES.values() for url in urls}
    everything = _read(deployment_dir / CONFIG_FILENAME)
    for name, value in _leaves(everything).items():
        if isinstance(value, str) and value.startswith("http"):
            table, key = name.rsplit(".", 1)
            assert (table, key) in followed, f"[{table}] {key}: add it to URL_SOURCES"


def test_config_set_moves_the_urls_built_from_a_port(
    deployment_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(deployment_dir)

    def site_url() -> str:
        return str(_read(deployment_dir / "merchant-site.toml")["merchant_site"]["custody_url"])

    assert custody_main(["config", "set", "custody.port", "20881", "--dir", d]) == 0
    out = capsys.readouterr().out
    assert "[merchant_site] custody_url follows: http://127.0.0.1:20881" in out
    assert site_url() == "http://127.0.0.1:20881"
    assert _read(deployment_dir / CONFIG_FILENAME)["merchant_site"]["custody_url"] == site_url()
    assert custody_main(["config", "set", "custody.host", "10.1.2.3", "--dir", d]) == 0
    assert site_url() == "http://10.1.2.3:20881"
    capsys.readouterr()
    for key, url_file, url_key in (
        ("firmware_sim.twilio_gateway.port", "custody", ("twilio", "base_url")),
        ("firmware_sim.node.port", "custody", ("node", "rpc_url")),
    ):
        assert custody_main(["config", "set", key, "20882", "--dir", d]) == 0
        table, name = url_key
        assert _read(deployment_dir / f"{url_file}.toml")[table][name] == "http://127.0.0.1:20882"
        assert f"[{table}] {name} follows" in capsys.readouterr().out
        # the simulated world serves on it: its own file has the port
        sim = _read(deployment_dir / "firmware-sim.toml")["firmware_sim"]
        assert sim[key.split(".")[1]]["port"] == 20882
    # the phone's URL to the site: "" (built when it starts) stays ""; a URL set follows
    assert custody_main(["config", "set", "merchant_site.port", "20883", "--dir", d]) == 0
    assert _read(deployment_dir / "vdevice.toml")["vdevice"]["merchant_url"] == ""
    url = "http://127.0.0.1:20883/api/v1/open"
    assert custody_main(["config", "set", "vdevice.merchant_url", url, "--dir", d]) == 0
    assert custody_main(["config", "set", "merchant_site.port", "20884", "--dir", d]) == 0
    phone = _read(deployment_dir / "vdevice.toml")
    assert phone["vdevice"]["merchant_url"] == "http://127.0.0.1:20884/api/v1/open"
    # a URL set by hand to somewhere else is left alone, and the command says which
    capsys.readouterr()
    other = "https://custody.example:8443"
    assert custody_main(["config", "set", "merchant_site.custody_url", other, "--dir", d]) == 0
    assert custody_main(["config", "set", "custody.port", "20885", "--dir", d]) == 0
    out = capsys.readouterr().out
    assert f"[merchant_site] custody_url ({other}) does not point at [custody]'s old" in out
    assert site_url() == other


CUSTODY = (sys.executable, "-m", "custody.cli")


def _machine(deployment: Any, name: str, role: str, source: Path, **env: str) -> Any:
    """A data directory holding `role`'s file from `source` and nothing else, as that role's
    own machine would (paths in it are relative to it; `env`: what differs on that machine)."""
    d = deployment(name, env=env)
    _only(d.data_dir, role)
    shutil.copy2(source / f"{role}.toml", d.data_dir / f"{role}.toml")
    return d


@pytest.mark.slow  # six real processes, two HSM inits, one account: ~20 s
def test_real_processes_run_each_on_its_own_file_alone(deployment: Any, tmp_path: Path) -> None:
    """The simulated world, the cold HSM, the hot HSM, the custody API, the V-device and the
    merchant site, each in its own directory with its own file only (plus what it is handed:
    the pairing file, the provisioning bundle, the account's tokens), work together: custody
    reaches the hot HSM, which reaches the cold HSM over the serial line; an account is
    created, confirmed at the cold console and provisioned on the phone, which then runs; the
    site reaches the custody API with the account's tokens and answers the phone."""
    source = tmp_path / "init"
    init_deployment(source)
    sim = _machine(deployment, "sim", "firmware-sim", source)
    sim.start_cli("firmware-sim", "firmware_sim.cli", "serve", wait=False)
    cold = _machine(
        deployment, "cold", "hsm-cold", source, CC__SERIAL__COLD_PORT=f"{sim.dev_dir}/serial-cold"
    )
    hot = _machine(
        deployment, "hot", "hsm-hot", source, CC__SERIAL__HOT_PORT=f"{sim.dev_dir}/serial-hot"
    )
    api = _machine(
        deployment,
        "api",
        "custody",
        source,
        CC__CUSTODY__DATABASE_URL=f"sqlite:///{tmp_path / 'api' / 'custody.db'}",
    )
    upgrade = api.start("db-upgrade", [*CUSTODY, "db", "upgrade", "--dir", str(api.data_dir)])
    cold.cli("init", "--dir", str(cold.data_dir), module="hsm_cold.cli")
    # the officer carries the pairing file from the cold HSM to the hot HSM
    shutil.move(cold.data_dir / "hsm-cold/pairing.bin", hot.data_dir / "hsm-cold/pairing.bin")
    hot.cli("init", "--dir", str(hot.data_dir), module="hsm_hot.cli")
    assert upgrade.wait_exit(60) == 0
    sim.processes[0].wait_ready()
    serving = [
        cold.start_cli("hsm-cold", "hsm_cold.cli", "serve", wait=False),
        hot.start_cli("hsm-hot", "hsm_hot.cli", "serve", wait=False),
        api.start_cli("custody-api", "custody.cli", "serve", wait=False),
    ]
    for process in serving:
        process.wait_ready()

    custody = load_config(api.data_dir, environ=api.env, role="custody")
    assert HotHsmClient.from_config(custody).health()["cold_reachable"] is True
    port = custody.section("custody").int("port")
    r = requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=30)
    assert (r.status_code, r.json()) == (200, {"status": "ok"})

    # The phone and the site, each on its own file plus what it is handed out of band.
    phone = _machine(
        deployment,
        "phone",
        "vdevice",
        source,
        CC__VDEVICE__MODEM_PORT=f"{sim.dev_dir}/modem-vdevice",
    )
    site = _machine(
        deployment,
        "site",
        "merchant-site",
        source,
        CC__MERCHANT_SITE__DATABASE_URL=f"sqlite:///{tmp_path / 'site' / 'merchant.db'}",
    )
    bundle, tokens = _provision(api, cold, phone, source)
    site.cli(
        "set-tokens",
        "--cold",
        "-",
        "--hot",
        "-",
        module=SITE,
        stdin=f"{tokens['cold']}\n{tokens['hot']}\n",
    )
    serving += [
        site.start_cli("merchant-site", SITE, "serve", wait=False),
        phone.start_cli("vdevice", "vdevice.cli", "run", wait=False),
    ]
    serving[-2].wait_ready()
    wait_until(
        lambda: (read_ready(phone.run_dir, "vdevice") or {}).get("provisioned") is True,
        60,
        "the V-device to run provisioned",
    )
    status = json.loads(phone.cli("status", "--json", module="vdevice.cli").stdout)
    assert (status["process"], status["provisioned"]) == ("running", True)
    assert status["account_id"] == bundle["account_id"]
    # the site reaches the custody API with the account's tokens (its events, both sides)
    added = json.loads(site.cli("catch-up", module=SITE).stdout)["added"]
    assert set(added) == {"cold", "hot"}, added
    # and answers the phone, with the token the two share (each from its own file)
    site_port = load_config(site.data_dir, environ={}, role="merchant-site").section(
        "merchant_site"
    )
    token = load_config(phone.data_dir, environ={}, role="vdevice").section("vdevice")
    r = requests.get(
        f"http://127.0.0.1:{site_port.int('port')}/api/v1/open/batch",
        headers={"X-VDevice-Token": token.str("merchant_token")},
        timeout=30,
    )
    assert (r.status_code, r.json()) == (200, {}), r.text
    machines = (
        (sim, "firmware-sim"),
        (cold, "hsm-cold"),
        (hot, "hsm-hot"),
        (api, "custody"),
        (phone, "vdevice"),
        (site, "merchant-site"),
    )
    for d, role in machines:
        assert [p.name for p in d.data_dir.glob("*.toml")] == [f"{role}.toml"]


SITE = "examples.merchant_site.cli"


def _provision(api: Any, cold: Any, phone: Any, source: Path) -> tuple[Any, Any]:
    """`custody account create` for the phone's identity, confirmed at the cold console and
    provisioned on the phone with the cold fingerprint typed in: each on its own machine."""
    identity, fp_line = phone.cli("init", module="vdevice.cli").stdout.splitlines()[:2]
    numbers = _read(source / "vdevice.toml")
    root = ExtendedKey.from_seed(bytes(range(32)), Network.REGTEST)
    acct = AccountKey.from_root(root, bip84_account_path(Network.REGTEST, 0))
    descriptor = str(wpkh_descriptor(acct.xpub, acct.fingerprint, acct.path, 0))
    created = json.loads(
        api.cli(
            "account", "create", "roles", "--vdevice-phone", numbers["vdevice"]["number"],
            "--owner-phone", numbers["phones"]["owner"], "--settlement-descriptor", descriptor,
            "--vdevice-identity", identity.strip(),
        ).stdout
    )  # fmt: skip
    pin = _read(source / "hsm-cold.toml")["hsm_cold"]["user_pin"]
    cold.cli(
        "confirm-account", str(created["account_id"]), "--vdevice-fingerprint",
        fp_line.split()[-1], "--pin-stdin", module="hsm_cold.cli", stdin=pin + "\n",
    )  # fmt: skip
    cold_fp = cold.cli("identity", module="hsm_cold.cli").stdout.strip()
    bundle = created["vdevice_bundle"]
    phone.cli(
        "provision", "--bundle", "-", "--cold-fingerprint", cold_fp, module="vdevice.cli",
        stdin=json.dumps(bundle),
    )  # fmt: skip
    return bundle, created["tokens"]
