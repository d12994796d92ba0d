"""Reading the user's files: regular files only, bounded sizes, strict UTF-8, limited YAML.

Every file fedsim reads on the user's behalf (scenario and sweep files, empirical service
times, dataset files) goes through :func:`read_bytes`, which refuses what is not a regular
file (``/dev/zero``, a named pipe, a folder) and files above a size limit *before* reading,
so that no input can hang the program or exhaust its memory. Problems are one-line
:class:`~fedsim.errors.ScenarioError`.

YAML is read by :func:`parse_yaml`: PyYAML's safe loader (no ``!!python`` tags: a YAML file
cannot run code) with limits on nesting depth and on the number of nodes *after* alias
expansion (a "billion laughs" file is refused after reading at most :data:`MAX_YAML_NODES`
nodes, in well under a second), integers within 64 bits (refused, with their line, beyond
that), and duplicate keys refused instead of silently keeping the last.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
import yaml.reader
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent

from fedsim.errors import ScenarioError

__all__ = ["MAX_DATA_BYTES", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "check_regular_file",
           "load_yaml_file", "one_line", "parse_yaml", "read_bytes", "read_text"]

MAX_YAML_BYTES = 4 << 20
"""Largest scenario or sweep file (4 MiB)."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of YAML collections (a scenario needs about 6)."""
MAX_YAML_NODES = 1_000_000
"""Most YAML nodes in one document, every alias counted as the nodes it stands for."""
MAX_DATA_BYTES = 256 << 20
"""Largest data file read whole (empirical durations: 256 MiB)."""
INT64_MAX = 2**63 - 1


def one_line(text: str) -> str:
    """``text`` with its line breaks and other control characters escaped, on one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def check_regular_file(path: Path, field: str, what: str, limit: int) -> int:
    """The size of ``path``, which must be a regular file of at most ``limit`` bytes.

    Raises ScenarioError(``field``, "cannot read <what>: <why>"), ``what`` naming the file
    (``scenario file`` when the field is its path, ``'durations.csv'`` otherwise).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ScenarioError(field, f"cannot read {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a named pipe" if stat.S_ISFIFO(info.st_mode) \
            else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a special file"
        raise ScenarioError(field, f"cannot read {what}: it is {kind}; give a regular file")
    if info.st_size > limit:
        raise ScenarioError(field, f"cannot read {what}: {info.st_size:,} bytes, above the limit of "
                            f"{limit:,}")
    return info.st_size


def read_bytes(path: str | Path, field: str, what: str, limit: int) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (see :func:`check_regular_file`).

    The file is opened without blocking and checked again once open, so a file swapped for a
    pipe in between is refused too, and at most ``limit`` bytes are ever read.
    """
    path = Path(path)
    check_regular_file(path, field, what, limit)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ScenarioError(field, f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ScenarioError(field, f"cannot read {what}: not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ScenarioError(field, f"cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise ScenarioError(field, f"cannot read {what}: above the limit of {limit:,} bytes")
    return b"".join(chunks)


def read_text(path: str | Path, field: str, what: str, limit: int) -> str:
    """A UTF-8 text file (a leading byte-order mark is dropped), read as :func:`read_bytes`."""
    data = read_bytes(path, field, what, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ScenarioError(field, f"cannot read {what}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                            f"at line {line}); save it as UTF-8") from None


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on depth, expanded size, integers and duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0  # nodes composed so far, an alias counting as its whole subtree
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1), mark)
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        before = self._expanded
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, mark)
        self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, nodes: int, mark: Any) -> None:
        self._expanded += nodes
        if self._expanded > MAX_YAML_NODES:
            raise ComposerError(None, None, f"more than {MAX_YAML_NODES:,} nodes once aliases are expanded", mark)

    def construct_yaml_int(self, node: Any) -> int:
        digits = str(node.value).replace("_", "").lstrip("+-")
        if len(digits) > 40:
            raise ConstructorError(None, None, "integer out of range (64 bits)", node.start_mark)
        value = super().construct_yaml_int(node)
        if abs(value) > INT64_MAX:
            raise ConstructorError(None, None, "integer out of range (64 bits)", node.start_mark)
        return value

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if (key_node.tag, key) in seen:
                raise ConstructorError(None, None, f"duplicate key {one_line(str(key))!r}", key_node.start_mark)
            seen.add((key_node.tag, key))
        return super().construct_mapping(node, deep=deep)


_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _LimitedLoader.construct_yaml_int)
_LimitedLoader.add_constructor("tag:yaml.org,2002:map", _LimitedLoader.construct_yaml_map)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what and where."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return one_line(f"{getattr(exc, 'problem', None) or 'invalid YAML'}{where}")


def parse_yaml(text: str, field: str) -> Any:
    """One YAML document from ``text``, within the limits above (ScenarioError(``field``) otherwise)."""
    if len(text) > MAX_YAML_BYTES:
        raise ScenarioError(field, f"YAML text of {len(text):,} characters, above the limit of {MAX_YAML_BYTES:,}")
    try:
        loader = _LimitedLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, found before parsing
        line = text.count("\n", 0, exc.position) + 1
        raise ScenarioError(field, f"character {exc.character!r} is not allowed in YAML (line {line})") from None
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ScenarioError(field, yaml_problem(exc)) from None
    except RecursionError:  # a construct deeper than the interpreter allows despite the depth limit
        raise ScenarioError(field, "YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str, field: str | None = None) -> Any:
    """Read and parse a YAML file (a scenario or sweep file) within the limits; errors name
    ``field`` (default: the file's path)."""
    where = str(path) if field is None else field
    return parse_yaml(read_text(path, where, what, MAX_YAML_BYTES), where)
