"""Configuration from defaults, the --config TOML file and the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relayd import config
from relayd.config import Config
from relayd.core.names import NameLimits


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relayd.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    expected = Config(
        prefix="relay",
        max_name_length=128,
        max_elements=1_000_000,
        max_pvs=100_000,
        max_placeholders=10_000,
        status_interval=1.0,
        log_level="INFO",
    )
    assert Config() == expected
    assert config.parse([]) == expected
    assert Config().name_limits == NameLimits(128, 1_000_000)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().prefix = "x"  # type: ignore[misc]


def test_cli_options() -> None:
    parsed = config.parse([
        "--prefix", "lab:bl1",
        "--max-name-length", "64",
        "--max-elements", "5000",
        "--max-pvs", "12",
        "--max-placeholders", "3",
        "--status-interval", "0.25",
        "--log-level", "DEBUG",
    ])
    assert parsed == Config("lab:bl1", 64, 5000, 12, 3, 0.25, "DEBUG")
    assert type(parsed.max_pvs) is int
    assert type(parsed.status_interval) is float
    assert parsed.name_limits == NameLimits(max_name_length=64, max_elements=5000)


def test_cli_partial_options_keep_defaults() -> None:
    parsed = config.parse(["--max-pvs", "7"])
    assert parsed == dataclasses.replace(Config(), max_pvs=7)


@pytest.mark.parametrize(
    "argv",
    [["--max-pvs", "many"], ["--status-interval", "soon"], ["--no-such-option", "1"],
     ["--max-pvs"]],
)
def test_cli_rejects_malformed_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config.parse(argv)
    assert info.value.code == 2


def test_toml_top_level_keys(tmp_path: Path) -> None:
    path = write(tmp_path, 'prefix = "fromfile"\nmax_pvs = 42\nstatus_interval = 2.5\n')
    parsed = config.parse(["--config", path])
    assert parsed == dataclasses.replace(
        Config(), prefix="fromfile", max_pvs=42, status_interval=2.5
    )


def test_toml_relayd_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[relayd]\nprefix = "tbl"\nmax_elements = 10\nlog_level = "WARNING"\n')
    parsed = config.parse(["--config", path])
    assert parsed == dataclasses.replace(
        Config(), prefix="tbl", max_elements=10, log_level="WARNING"
    )


def test_load_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_placeholders = 9\n')
    assert config.load_file(path) == {"max_placeholders": 9}


@pytest.mark.parametrize(
    "text, unknown",
    [
        ("max_pv = 5\n", "max_pv"),
        ('prefix = "ok"\nbogus = 1\nzzz = 2\n', "bogus, zzz"),
        ('[relayd]\nprefixx = "a"\n', "prefixx"),
        ("[other]\nprefix = \"a\"\n", "other"),
        ('config = "x.toml"\n', "config"),
    ],
)
def test_toml_unknown_keys_refused(tmp_path: Path, text: str, unknown: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        config.parse(["--config", path])
    assert f"unknown option(s) {unknown}" in str(info.value)
    assert path in str(info.value)


def test_toml_syntax_error_is_a_value_error(tmp_path: Path) -> None:
    path = write(tmp_path, "prefix = \n")
    with pytest.raises(ValueError):
        config.parse(["--config", path])


def test_missing_config_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        config.parse(["--config", str(tmp_path / "missing.toml")])


def test_cli_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'prefix = "fromfile"\nmax_pvs = 42\nmax_elements = 99\n')
    parsed = config.parse(["--prefix", "fromcli", "--config", path, "--max-pvs", "7"])
    assert parsed.prefix == "fromcli"
    assert parsed.max_pvs == 7
    assert parsed.max_elements == 99  # only in the file
    assert parsed.max_placeholders == 10_000  # in neither


@pytest.mark.parametrize("prefix", ["relay:", "a b", "a.b", "", "é"])
def test_invalid_prefix_refused_on_cli(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        config.parse(["--prefix", prefix])


def test_invalid_prefix_refused_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'prefix = "has.dot"\n')
    with pytest.raises(ValueError, match="invalid prefix"):
        config.parse(["--config", path])


def test_invalid_prefix_in_file_overridden_by_cli_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, 'prefix = "has.dot"\n')
    assert config.parse(["--config", path, "--prefix", "good"]).prefix == "good"


@pytest.mark.parametrize(
    "changes",
    [
        {"max_name_length": 0},
        {"max_elements": 0},
        {"max_pvs": 0},
        {"max_placeholders": -1},
        {"status_interval": 0.0},
        {"status_interval": -1.0},
    ],
)
def test_limits_must_be_positive(changes: dict) -> None:
    with pytest.raises(ValueError):
        Config(**changes)
    with pytest.raises(ValueError):
        config.replace(Config(), **changes)


def test_limits_of_one_are_allowed() -> None:
    one = Config(max_name_length=1, max_elements=1, max_pvs=1, max_placeholders=1,
                 status_interval=0.001)
    assert one.max_pvs == 1


def test_cli_limit_zero_refused() -> None:
    with pytest.raises(ValueError, match="max_pvs must be >= 1"):
        config.parse(["--max-pvs", "0"])


def test_replace() -> None:
    base = Config()
    changed = config.replace(base, prefix="other", max_pvs=3)
    assert changed == dataclasses.replace(base, prefix="other", max_pvs=3)
    assert base.prefix == "relay"


def test_stale_timeout(tmp_path: Path) -> None:
    assert Config().stale_timeout == 0.0  # off by default
    assert config.parse(["--stale-timeout", "0.5"]).stale_timeout == 0.5
    assert config.parse(["--config", write(tmp_path, "stale_timeout = 2\n")]).stale_timeout == 2
    assert Config.from_json(Config(stale_timeout=1.5).to_json()).stale_timeout == 1.5
    with pytest.raises(ValueError, match="stale_timeout must be >= 0"):
        Config(stale_timeout=-1.0)
