"""Load and check config.yaml, the one configuration file of Python Hello Printer.

Every script reads its settings through `load_config()`, which returns the
`system` mapping with every key present: the file's values, checked and
normalised, and the defaults below for what the file leaves out.

    from hello.base.config import load_config, ConfigError
    config = load_config()            # HELLO_CONFIG=path selects another file
    config["server"]["port"]          # 8000

A file that cannot be used raises ConfigError with one line naming the file,
the key path and what was expected (files over MAX_CONFIG_BYTES, and YAML whose
aliases expand past MAX_YAML_VALUES, are refused before anything is built), e.g.

    config.yaml: system.backup.time: expected HH:MM, got '25:00'

Scripts print that line and exit with EXIT_CONFIG (2) before doing anything.
Relative paths (backup source and destination, run_dir) are resolved against
the directory that holds the config file.

Run `python -m hello.base.config [PATH]` to check a file and print it normalised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hello.base.checkout import CHECKOUT
from hello.base.config_schema import SCHEMA, InvalidKey, InvalidValue, check_across_keys, check_tree, join_key

DEFAULT_NAME = "config.yaml"  # a checkout's own config file, beside its commands
DEFAULT_PATH = CHECKOUT / DEFAULT_NAME
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 75
# Hostile or broken files are refused before they can cost time or memory (a YAML alias bomb of 496 bytes
# expands to billions of values): the shipped file is about 2 KiB and 90 values.
MAX_CONFIG_BYTES = 64 << 10
MAX_YAML_VALUES = 10_000  # scalars, lists and mappings, every alias counted as what it stands for


class ConfigError(Exception):
    """A configuration that cannot be used; str() is the one-line message."""


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


class _Unbounded(Exception):
    """YAML whose aliases expand too far, or into themselves."""


def _expanded_values(root: yaml.Node) -> int:
    """How many values root stands for once every alias is expanded; raise _Unbounded past MAX_YAML_VALUES.

    Aliases share nodes, so the count is memoised per node (linear in the file, whatever it expands to);
    an alias inside its own anchor (a recursive structure) is refused too.
    """
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = [] if isinstance(node, yaml.ScalarNode) else node.value
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in children for part in pair]
        if children_done:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise _Unbounded(f"more than {MAX_YAML_VALUES} YAML values, aliases expanded (an alias bomb?)")
            continue
        if id(node) in sizes:
            continue
        ancestors.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in ancestors:
                raise _Unbounded("a YAML alias refers to the value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _load(loader_class: type, text: str) -> Any:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_values(node)  # before anything is built
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_yaml(text: str) -> Any:
    """yaml.safe_load, with the expansion of aliases bounded (_expanded_values).

    Written against PyYAML 6.0 (with its bundled libyaml). libyaml parses first when present: it is fast and
    refuses flow nesting deeper than 1000 levels, which PyYAML's pure-Python scanner takes quadratic time over.
    Its other errors are left to the pure-Python parser, whose messages the docs and tests quote.
    """
    if getattr(yaml, "__with_libyaml__", False):
        try:
            return _load(yaml.CSafeLoader, text)
        except yaml.YAMLError as exc:
            if "maximum nesting depth" in str(exc):
                raise
    return _load(yaml.SafeLoader, text)


def config_path() -> Path:
    """The file to read: HELLO_CONFIG when set, else config.yaml beside this module."""
    chosen = os.environ.get("HELLO_CONFIG")
    return Path(chosen) if chosen else DEFAULT_PATH


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The checked `system` mapping of the file at path (default: config_path())."""
    path = Path(path) if path is not None else config_path()
    shown = _shown(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # never more: HELLO_CONFIG may name /dev/zero
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{shown}: larger than {MAX_CONFIG_BYTES >> 10} KiB; a config file is a few KiB")
        text = data.decode("utf-8")
    except FileNotFoundError:
        via = " (named by HELLO_CONFIG)" if os.environ.get("HELLO_CONFIG") else ""
        raise ConfigError(f"{shown}: no such config file{via}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read: {exc}") from None
    try:
        raw = _parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{shown}: invalid YAML: nested too deeply") from None
    except _Unbounded as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    try:
        checked = check_tree(raw, SCHEMA, "", path.resolve().parent)
        check_across_keys(checked["system"])
    except InvalidKey as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    system = checked["system"]
    system["config_file"] = str(path.resolve())
    return system


def server_url(config: dict[str, Any]) -> str:
    """The base URL of the server config.yaml describes; 0.0.0.0 and :: are reached on loopback."""
    host, port = config["server"]["host"], config["server"]["port"]
    shown = (
        "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    )
    return f"http://{shown}:{port}"


def add_server_flags(parser: argparse.ArgumentParser, when: str = "") -> None:
    """--host, --port, --workers: the flags that override system.server (applied by apply_server_flags)."""
    parser.add_argument("--host", help=f"{when}address to listen on (system.server.host)")
    parser.add_argument("--port", type=int, help=f"{when}port to listen on (system.server.port)")
    parser.add_argument("--workers", type=int, help=f"{when}worker processes (system.server.workers)")


def apply_server_flags(config: dict[str, Any], host: str | None, port: int | None, workers: int | None) -> dict:
    """Put --host, --port and --workers over system.server, checked like the file's values; return those given."""
    flags = {}
    for key, value in (("host", host), ("port", port), ("workers", workers)):
        if value is not None:
            try:
                flags[key] = SCHEMA["system"]["server"][key][0](value)  # the file's checker
            except InvalidValue as exc:
                raise ConfigError(f"--{key}: {exc}") from None
    config["server"].update(flags)
    return flags


def served_url(config: dict[str, Any]) -> str:
    """The URL the running server answers on (its state file: it may run with another --port), else server_url."""
    return RunFiles(Path(config["run_dir"])).read_state().get("url") or server_url(config)


@dataclass(frozen=True)
class RunFiles:
    """The server's files in system.run_dir, shared by the server and the commands that control it."""

    run_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "hello_world.pid"  # the supervisor's PID

    @property
    def logfile(self) -> Path:
        return self.run_dir / "hello_world.log"  # background mode

    @property
    def statefile(self) -> Path:
        return self.run_dir / "hello_world.state.json"  # url, version, commit, last reload

    @property
    def multiproc(self) -> Path:
        return self.run_dir / "multiproc"  # prometheus_client's files of the workers

    def read_state(self) -> dict[str, Any]:
        """What the running server last wrote to its state file; {} when there is none."""
        try:
            return json.loads(self.statefile.read_text())
        except (OSError, ValueError):
            return {}

    def running_pid(self) -> int | None:
        """The server's PID from the pidfile, if that process is alive and is the server."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"hello_world.py" in cmdline else None


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every value of a checked config by its dotted key path."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        where = join_key(prefix, key)
        flat.update(_leaves(value, where) if isinstance(value, dict) else {where: value})
    return flat


def differences_from_defaults(config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key path: (value, default)} for every key the file sets to something else than its default."""
    base_dir = Path(config["config_file"]).parent
    defaults = _leaves(check_tree({}, SCHEMA["system"], "system", base_dir), "system")
    values = _leaves({k: v for k, v in config.items() if k != "config_file"}, "system")
    return {key: (value, defaults.get(key)) for key, value in values.items() if value != defaults.get(key)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hello.base.config", description="Check a config file (default: config.yaml or HELLO_CONFIG)."
    )
    parser.add_argument("path", nargs="?", help="the file to check")
    parser.add_argument("--json", action="store_true", help="print the normalised config as JSON")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(config, indent=2))
        return EXIT_OK
    changed = differences_from_defaults(config)
    print(f"{_shown(Path(config['config_file']))}: OK, {len(changed)} key(s) differ from the defaults")
    for key, (value, default) in changed.items():
        line = f"  {key}: {value!r} (default {default!r})"
        print(line if len(line) <= 120 else line[:117] + "...")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
