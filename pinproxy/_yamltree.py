"""A light YAML tree built straight from libyaml's event stream, with a line per node.

PyYAML's composer makes a Node and two Mark objects per value: a 100 000-host pinset costs
seconds and hundreds of MB before validation starts. The loader needs much less: each value,
its line and its resolved type. Building that from the C parser's events is about three times
faster and keeps nothing but these small objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

__all__ = ["Alias", "Document", "Mapping", "Node", "Scalar", "Sequence", "parse_documents"]

_PARSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML was built with it
_RESOLVER = yaml.resolver.Resolver()
_STR = "tag:yaml.org,2002:str"


class Scalar:
    """A scalar and the YAML type it resolves to (`tag:yaml.org,2002:str`, `…:bool`, …).

    Keeps only what the loader reads, not libyaml's event and its two marks: a big pinset has
    hundreds of thousands of scalars, and holding the events would multiply the peak memory.
    """

    __slots__ = ("line", "tag", "value")

    def __init__(self, value: str, line: int, tag: str) -> None:
        self.value = value
        self.line = line
        self.tag = tag


class Sequence:
    __slots__ = ("items", "line", "streamed")

    def __init__(self, line: int) -> None:
        self.line = line
        self.items: list[Node] = []
        self.streamed = False  # its items went to `on_item` as they were read, not to `items`


class Mapping:
    __slots__ = ("items", "line")

    def __init__(self, line: int) -> None:
        self.line = line
        self.items: list[Node] = []  # key, value, key, value, …


class Alias:
    """`*name`: pinsets refuse aliases, so only where it stood is kept."""

    __slots__ = ("line",)

    def __init__(self, line: int) -> None:
        self.line = line


Node = Scalar | Sequence | Mapping | Alias


class Document:
    __slots__ = ("line", "root")

    def __init__(self, line: int, root: Node) -> None:
        self.line = line  # of its `---`, or of its first value
        self.root = root


def parse_documents(text: str | bytes | BinaryIO, stream_key: str | None = None,
                    on_item: Callable[[Node], None] | None = None) -> list[Document]:
    """Every document of a YAML stream; raises `yaml.YAMLError` (with a mark) for bad YAML.

    With `stream_key`, each item of the list under that top-level key is handed to `on_item`
    as soon as it is read, and not kept: a 100 000-rule list never exists as a tree at once.
    A binary file is read in chunks; a `str` costs libyaml a UTF-8 copy of the whole text.
    """
    documents: list[Document] = []
    open_containers: list[Sequence | Mapping] = []
    document_line = 1
    parser = _PARSER(text)
    try:
        # About a million events for a big pinset: one type test per event, no generator.
        while (event := parser.get_event()) is not None:
            node: Node
            kind = type(event)
            if kind is ScalarEvent:
                node = Scalar(event.value, event.start_mark.line + 1, _scalar_tag(event))
            elif kind is MappingStartEvent:
                open_containers.append(Mapping(_line(event)))
                continue
            elif kind is SequenceStartEvent:
                sequence = Sequence(_line(event))
                sequence.streamed = on_item is not None and _is_value_of(stream_key,
                                                                         open_containers)
                open_containers.append(sequence)
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                node = open_containers.pop()
            elif kind is AliasEvent:
                node = Alias(_line(event))
            elif kind is DocumentStartEvent:
                document_line = _line(event)
                continue
            else:
                continue
            if not open_containers:
                documents.append(Document(document_line, node))
            elif on_item is not None and isinstance(parent := open_containers[-1], Sequence) and (
                parent.streamed
            ):
                on_item(node)
            else:
                open_containers[-1].items.append(node)
    finally:
        parser.dispose()
    return documents


def _scalar_tag(event: ScalarEvent) -> str:
    """The tag a safe loader would give: explicit, else quoted means str, else resolved."""
    if event.tag and event.tag != "!":
        return event.tag
    if not event.implicit[0]:  # quoted (or tagged `!`): a string whatever it reads like
        return _STR
    value = event.value
    if value and value[0] not in _RESOLVER.yaml_implicit_resolvers:
        return _STR  # no implicit type starts with this character: what resolve() would say
    return str(_RESOLVER.resolve(yaml.ScalarNode, value,  # type: ignore[no-untyped-call]
                                 event.implicit))


def _is_value_of(key: str | None, open_containers: list[Sequence | Mapping]) -> bool:
    """True when the container starting now is the value of `key` in the top-level mapping."""
    if len(open_containers) != 1 or not isinstance(root := open_containers[0], Mapping):
        return False
    items = root.items
    return len(items) % 2 == 1 and isinstance(items[-1], Scalar) and items[-1].value == key


def _line(event: Event) -> int:
    return event.start_mark.line + 1 if event.start_mark else 1
