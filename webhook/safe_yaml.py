"""YAML loading with bounded alias expansion and nesting, for manifests from anyone.

``yaml.safe_load`` shares one object per anchor, but ``thaw inject`` writes
every alias out in full: nine aliases per level make a 237-byte "billion
laughs" document megabytes of output, and deeper ones never finish. Deep
nesting, in turn, ends in a RecursionError. This loader counts the nodes
each alias would expand to and refuses a stream once they pass
``MAX_ALIAS_NODES``, refuses recursive aliases (which could never be
written out) and nesting deeper than ``MAX_DEPTH``, each with a one-line
``LimitError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

MAX_DEPTH = 100  # Kubernetes objects, CRD schemas included, stay far below
MAX_ALIAS_NODES = 100_000  # nodes added by aliases, per stream: merge keys fit easily


class LimitError(yaml.YAMLError):
    """A stream past a loader limit; ``str()`` is one line."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds alias expansion and nesting depth (see module doc)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitError(f"{_where(event)}: nesting deeper than {MAX_DEPTH} levels")
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        if event.anchor in self._open_anchors:
            raise LimitError(f"{_where(event)}: alias *{event.anchor} refers to itself")
        node = self.anchors.get(event.anchor)
        if node is None:
            return  # the composer reports the undefined alias
        self._alias_nodes += self._size(node)
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise LimitError(
                f"{_where(event)}: aliases expand to more than {MAX_ALIAS_NODES} nodes"
            )

    def _size(self, node: yaml.Node) -> int:
        """Nodes in ``node`` with every alias written out (shared nodes counted each time)."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return size

    def compose_document(self) -> Any:
        node = super().compose_document()
        self._sizes = {}  # anchors do not cross documents
        return node


def _where(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"


def load_all(text: str) -> Iterator[Any]:
    """Every document of ``text``; raises yaml.YAMLError (LimitError past a limit)."""
    loader = BoundedLoader(text)
    try:
        while loader.check_data():
            yield loader.get_data()
    finally:
        loader.dispose()
