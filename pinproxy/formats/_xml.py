"""A small, safe XML reader for app files: elements with line numbers, no entities, no DTDs.

`xml.etree` neither refuses entity declarations (the "billion laughs" bomb) nor reports the line
of each element, and defusedxml is not a dependency. So this drives `xml.parsers.expat`
directly: any entity declaration is refused, external entities are never fetched, and a
DOCTYPE is refused too unless the format needs one (a plist's bare `<!DOCTYPE plist ...>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.parsers import expat
from xml.sax.saxutils import escape

from pinproxy.errors import FormatError

__all__ = ["Element", "parse_xml", "xml_comment"]


@dataclass(frozen=True, slots=True)
class Element:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[Element] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The element's own text, stripped (the text of children is not included)."""
        return "".join(self.chunks).strip()


def parse_xml(data: bytes, source: str, doctype: bool = False) -> Element:
    """The root element of an XML document; `FormatError` with `source:line` if it is unsafe
    or not well-formed. `doctype` allows a DOCTYPE without an internal subset."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[Element] = []
    roots: list[Element] = []

    def refuse(message: str) -> FormatError:
        return FormatError(f"{source}:{parser.CurrentLineNumber}: {message}")

    def start(tag: str, attrs: dict[str, str]) -> None:
        element = Element(tag, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(tag: str) -> None:
        stack.pop()

    def characters(text: str) -> None:
        if stack:
            stack[-1].chunks.append(text)

    def start_doctype(name: str, sysid: str | None, pubid: str | None, internal: bool) -> None:
        if not doctype or internal:
            raise refuse("a DOCTYPE is not accepted here (refused to guard against XML entity "
                         "attacks); remove it")

    def entity(*args: object) -> None:
        raise refuse("XML entity declarations are refused (they can expand without bound)")

    def external(*args: object) -> int:
        raise refuse("external XML entities are refused")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = start_doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        message = expat.errors.messages[e.code] if e.code is not None else str(e)
        raise FormatError(f"{source}:{e.lineno}: not well-formed XML: {message}") from None
    return roots[0]


def xml_comment(text: str) -> str:
    """An XML comment; `--` may not occur inside one."""
    return f"<!-- {re.sub('-(?=-)', '- ', escape(text))} -->"
