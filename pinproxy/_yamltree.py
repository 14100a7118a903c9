"""A light YAML tree built straight from libyaml's event stream, with a line per node.

PyYAML's composer makes a Node and two Mark objects per value: a 100 000-host pinset costs
seconds and hundreds of MB before validation starts. The loader needs much less: each value,
its line and its resolved type. Building that from the C parser's events is about three times
faster and keeps nothing but these small objects.
"""

from __future__ import annotations

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


class Scalar:
    """A scalar and the YAML type it resolves to (`tag:yaml.org,2002:str`, `…:bool`, …)."""

    __slots__ = ("_event",)

    def __init__(self, event: ScalarEvent) -> None:
        self._event = event

    @property
    def value(self) -> str:
        return str(self._event.value)

    @property
    def line(self) -> int:
        return _line(self._event)

    @property
    def tag(self) -> str:
        event = self._event
        if event.tag and event.tag != "!":
            return str(event.tag)
        resolved = _RESOLVER.resolve(  # type: ignore[no-untyped-call]
            yaml.ScalarNode, event.value, event.implicit)
        return str(resolved)


class Sequence:
    __slots__ = ("items", "line")

    def __init__(self, line: int) -> None:
        self.line = line
        self.items: list[Node] = []


class Mapping:
    __slots__ = ("items", "line")

    def __init__(self, line: int) -> None:
        self.line = line
        self.items: list[Node] = []  # key, value, key, value, …

    @property
    def pairs(self) -> list[tuple[Node, Node]]:
        return list(zip(self.items[0::2], self.items[1::2], strict=True))


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


def parse_documents(text: str) -> list[Document]:
    """Every document of a YAML stream; raises `yaml.YAMLError` (with a mark) for bad YAML."""
    documents: list[Document] = []
    open_containers: list[Sequence | Mapping] = []
    document_line = 1
    for event in yaml.parse(text, Loader=_PARSER):
        node: Node
        if isinstance(event, ScalarEvent):
            node = Scalar(event)
        elif isinstance(event, MappingStartEvent):
            open_containers.append(Mapping(_line(event)))
            continue
        elif isinstance(event, SequenceStartEvent):
            open_containers.append(Sequence(_line(event)))
            continue
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            node = open_containers.pop()
        elif isinstance(event, AliasEvent):
            node = Alias(_line(event))
        elif isinstance(event, DocumentStartEvent):
            document_line = _line(event)
            continue
        else:
            continue
        if open_containers:
            open_containers[-1].items.append(node)
        else:
            documents.append(Document(document_line, node))
    return documents


def _line(event: Event) -> int:
    return event.start_mark.line + 1 if event.start_mark else 1
