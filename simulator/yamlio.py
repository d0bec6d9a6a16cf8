"""A YAML reader for files that may be hostile: bounded in time and memory, strict about what it accepts.

`yaml.safe_load` constructs an alias bomb ("billion laughs": aliases of aliases, a few KB) as shared
references at once, and whatever walks the result afterwards (validation, an error message that prints
the input) walks its expanded form: 10^9 nodes. This reader streams the parser's events first, counting
what the document expands to, alias by alias, and refuses it past a bound before anything is built. It
also refuses duplicate mapping keys (YAML says they are an error; PyYAML lets the last one win), keys
that are not strings, tags beyond plain scalars, lists and mappings (`!!python/object`, `!!binary`,
`!!set`), nesting deeper than a scenario needs, and bytes that are not UTF-8.

Errors name a place (a file's byte offset, or a line and column) and what was expected, never the
expanded input. No torch here: `veil validate` imports this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from entities.files import NotRegular, read_regular

MAX_BYTES: Final = 1 << 20  # a scenario is a few KB
MAX_NODES: Final = 100_000  # scalars, lists and mappings after expanding every alias
MAX_DEPTH: Final = 32  # a scenario nests 4 deep
MAX_DIGITS: Final = 100  # Python reads no integer of more than 4300 digits; no field needs 100
MAX_MESSAGE: Final = 160  # characters of a parser's own message that an error repeats

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where it is built


class YamlRefused(ValueError):
    """A document this reader will not build: `where` is a place in the file, `message` what was expected."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(file)"


def _short(text: object) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class _Loader(_BaseLoader):  # type: ignore[misc]
    """SafeLoader that refuses duplicate and non-string keys, and tags a scenario has no use for."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"a key that is not a name ({type(key).__name__}); expected a field name",
                        key_node.start_mark,
                    )
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {_short(repr(key))} (first at line {first[key].line + 1}); "
                        "expected each key once in a mapping",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_timestamp_as_text(self, node: Any) -> Any:
        return self.construct_scalar(node)  # `2024-01-01` stays the text it is

    def refuse_tag(self, node: Any) -> Any:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"tag {_short(node.tag)!s} is not allowed; expected plain numbers, strings, lists and mappings",
            node.start_mark,
        )


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_timestamp_as_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader.refuse_tag)
_Loader.add_constructor(None, _Loader.refuse_tag)  # any other tag: !!python/object, !custom, ...


def _check_events(text: str) -> None:
    """Stream the parser's events and refuse a document that nests or expands past the bounds.

    Each anchor's expanded size is known when its node ends; an alias adds that size to the running
    total, so an alias bomb is refused after a few dozen events instead of after 10^9 nodes.
    """
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    stack: list[list[Any]] = []  # open collections: [anchor, expanded size so far]
    total = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise YamlRefused(
                    _at(event.start_mark), f"nested more than {MAX_DEPTH} deep; a scenario nests 4"
                )
            stack.append([event.anchor, 1])
            size = 1  # the collection itself; its items are counted as they come
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, whole = stack.pop()
            if anchor is not None:
                sizes[anchor] = whole
            if stack:
                stack[-1][1] += whole
            continue
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            digits = event.value.lstrip("+-").replace("_", "")
            if event.implicit[0] and len(digits) > MAX_DIGITS and digits.isdigit():
                raise YamlRefused(
                    _at(event.start_mark), f"a number of {len(digits)} digits; expected at most {MAX_DIGITS}"
                )
            if event.anchor is not None:
                sizes[event.anchor] = 1
            if stack:
                stack[-1][1] += 1
        elif isinstance(event, yaml.AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                raise YamlRefused(
                    _at(event.start_mark),
                    f"alias *{_short(event.anchor)} is inside the node it names; expected a finite tree",
                )
            if event.anchor not in sizes:
                raise YamlRefused(
                    _at(event.start_mark), f"alias *{_short(event.anchor)} names no anchor defined before it"
                )
            size = sizes[event.anchor]
            if stack:
                stack[-1][1] += size
        else:
            continue
        total += size
        if total > MAX_NODES:
            raise YamlRefused(
                _at(event.start_mark),
                f"the document expands to more than {MAX_NODES} values (aliases of aliases?); "
                "expected a scenario of a few hundred",
            )


def loads(text: str) -> Any:
    """The document in `text`, or YamlRefused naming where it went wrong."""
    try:
        _check_events(text)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = ", ".join(str(part) for part in (err.context, err.problem) if part)
        raise YamlRefused(_at(mark), f"not valid YAML: {_short(what)}") from None
    except yaml.reader.ReaderError as err:
        raise YamlRefused(
            f"character {err.position}", f"not valid YAML: {_short(err.reason)} (#x{err.character:04x})"
        ) from None
    except yaml.YAMLError as err:
        raise YamlRefused("(file)", f"not valid YAML: {_short(err)}") from None
    except RecursionError:  # not reached within MAX_DEPTH; a last guard
        raise YamlRefused("(file)", "nested too deep to read") from None
    except YamlRefused:
        raise
    except ValueError as err:  # an integer of more than 4300 digits (sys.set_int_max_str_digits)
        raise YamlRefused("(file)", f"a value that cannot be read: {_short(err)}") from None


def decode(data: bytes) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped), or YamlRefused naming the first bad byte's offset."""
    if len(data) > MAX_BYTES:
        raise YamlRefused("(file)", f"{len(data)} bytes; expected a scenario of at most {MAX_BYTES} bytes")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise YamlRefused("byte 0", "a UTF-16 byte-order mark; expected UTF-8 text")
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = err.start + skip
        line = data.count(b"\n", 0, at) + 1
        bad = data[at : at + 1].hex()
        where = f"byte {at} (line {line})"
        raise YamlRefused(where, f"byte 0x{bad} is not UTF-8; expected UTF-8 text") from None


def load_file(path: str | Path) -> Any:
    """Read, decode and load one YAML file; OSError for a file that cannot be read, YamlRefused otherwise."""
    path = Path(path)
    try:
        data = read_regular(path, MAX_BYTES)
    except NotRegular as err:
        what = "is a directory" if path.is_dir() else str(err.strerror)
        raise YamlRefused("(file)", f"{what}; expected a scenario file") from None
    return loads(decode(data))
