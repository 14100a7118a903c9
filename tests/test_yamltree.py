"""`_yamltree` must read every value as PyYAML's safe loader does: same type (tag), same text,
same line. Its shortcuts (quoted means string, a first character no implicit type starts with
means string) are checked here against PyYAML's own composer."""

from __future__ import annotations

import io

import pytest
import yaml

from pinproxy._yamltree import Mapping, Scalar, Sequence, parse_documents

PLAIN = ["host", "pins", "sha256/AAAA", "example.com", "yes", "No", "on", "OFF",
         "y", "n", "true", "False", "~", "null", "Null", "", "0", "1", "-1", "+1", "0x1f", "0o17",
         "1_000", "1.5", ".5", ".inf", "-.Inf", ".nan", "2027-12-31", "2027-12-31T10:00:00Z",
         "1:20", "<<", "=", "10.0.0.1", "2001:db8::1", "o", "enforce", "report", "Yes please"]


def values(node: Mapping) -> list[Scalar]:
    found = node.items[1::2]
    assert all(isinstance(value, Scalar) for value in found)
    return found  # type: ignore[return-value]


@pytest.mark.parametrize("style", ["plain", "single", "double", "tagged"])
def test_types_and_text_match_pyyaml(style: str) -> None:
    quote = {"plain": "{}", "single": "'{}'", "double": '"{}"', "tagged": "!!str {}"}[style]
    text = "".join(f"k{i}: {quote.format(value)}\n" for i, value in enumerate(PLAIN))
    [document] = parse_documents(text)
    assert isinstance(document.root, Mapping)
    expected = yaml.compose(text, Loader=yaml.CSafeLoader)
    assert expected is not None
    ours = values(document.root)
    assert [(s.tag, s.value, s.line) for s in ours] == [
        (node.tag, node.value, node.start_mark.line + 1) for _, node in expected.value]


def test_a_binary_file_and_bytes_read_alike() -> None:
    text = "version: 1\nhosts:\n  - host: a.example\n    pins: [x, y]\n"
    seen: list[list[object]] = []
    for source in (text, text.encode(), io.BytesIO(text.encode())):
        items: list[object] = []
        parse_documents(source, stream_key="hosts", on_item=items.append)
        [rule] = items
        assert isinstance(rule, Mapping)
        pins = rule.items[3]
        assert isinstance(pins, Sequence)
        seen.append([rule.line, [s.value for s in pins.items if isinstance(s, Scalar)]])
    assert seen == [[3, ["x", "y"]]] * 3
