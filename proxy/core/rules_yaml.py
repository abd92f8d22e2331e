"""Core layer: the YAML the rules file is written in, read strictly.

A key written twice in one mapping is refused: YAML's loaders keep the last silently, and a second
`server:` block would drop the first one's `api_keys` (an open proxy). Keys brought in by a merge (`<<:`)
may still be overridden, as the shipped rules.yaml does.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:  # as written: before the merge brings other keys in
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                line = first.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: refused as YAML refuses it, further on
                continue
            if line != key_node.start_mark.line + 1:
                raise ConstructorError(None, None, f"the key {key!r} is written twice (first at line {line})",
                                       key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The document in `text`; yaml.YAMLError (with its mark) when it is not valid, or repeats a key."""
    return yaml.load(text, Loader=_StrictLoader)
