"""Reading PostgreSQL's stored expressions (pg_node_tree text) for calls of a function.

The parser keeps a call as written: a left-out argument with a default is filled in by the
planner each time the expression is planned, so a stored view, index, generated column or
check that calls pgvision.embed(image) follows whatever the default model is at the time.
set_default_model must know of such expressions before it changes that default.
"""

import re

_FUNCEXPR = re.compile(r"\{FUNCEXPR :funcid (\d+) ")


def _group_end(text, start):
    """The index after the brace or parenthesis group that opens at ``start``."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced node tree")


def _arg_count(text, start):
    """Arguments of the FUNCEXPR node that opens at ``start``."""
    end = _group_end(text, start)
    node = text[start:end]
    # the node's own fields are at depth 1; :args is one of them
    depth, i = 0, 0
    while i < len(node):
        ch = node[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif depth == 1 and node.startswith(":args ", i):
            j = i + len(":args ")
            if node.startswith("<>", j):
                return 0
            args_end = _group_end(node, j)
            count, k = 0, j + 1
            while k < args_end - 1:
                if node[k] == "{":
                    count += 1
                    k = _group_end(node, k)
                else:
                    k += 1
            return count
        i += 1
    return 0


def calls_with_fewer_args(tree, funcs):
    """Whether ``tree`` calls a function of ``funcs`` ({oid: number of arguments}) with fewer
    arguments than it has: a call that leaves a defaulted argument out."""
    if not tree:
        return False
    for m in _FUNCEXPR.finditer(tree):
        oid = int(m.group(1))
        if oid in funcs and _arg_count(tree, m.start()) < funcs[oid]:
            return True
    return False
