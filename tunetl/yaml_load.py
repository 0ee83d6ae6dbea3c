"""The one YAML loader of tunetl: safe tags only, no duplicate keys, and a bounded expansion of aliases.

PyYAML's safe loader shares the node of an alias (`*a`) with its anchor, so a few hundred bytes of nested
aliases ("billion laughs") describe a document with billions of nodes. Anything that walks it (a deep copy,
validation) then eats the machine's memory. tunetl's inputs are small, so a document whose fully expanded
node count exceeds `MAX_NODES` (or whose nesting exceeds `MAX_DEPTH`) is refused before it is built.
Error messages give the line and column, never the file's text (which may hold secrets).
"""

from __future__ import annotations

from typing import Any

import yaml

#: Most nodes a document may expand to, aliases counted as often as they are used.
MAX_NODES = 100_000
#: Deepest nesting of mappings and sequences.
MAX_DEPTH = 50


class YamlInputError(ValueError):
    """YAML that tunetl will not read; the message names the place in the text and what is wrong."""


class _Loader(yaml.SafeLoader):
    """Safe loader that refuses a key given twice in one mapping (the later one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise YamlInputError(
                    f"line {key_node.start_mark.line + 1}: key {key_node.value!r} is given twice in one mapping "
                    f"(first on line {seen[key]}); keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, computed without expanding (memoized per node)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise YamlInputError(f"line {node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        total = min(total, MAX_NODES + 1)
        sizes[id(node)] = total
        return total

    return size(root, 0)


def _where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def load_yaml(text: str) -> Any:
    """Parse one YAML document; raises `YamlInputError` (a one-line reason with its line) on bad input."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as err:  # the reader refuses control characters at once
        raise YamlInputError(str(getattr(err, "reason", None) or err).splitlines()[0]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise YamlInputError(
                f"expands to more than {MAX_NODES} values through its aliases (*name); write the values out"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or getattr(err, "context", None) or type(err).__name__
        raise YamlInputError(f"{_where(err)}{problem}") from None
    except RecursionError:
        raise YamlInputError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
