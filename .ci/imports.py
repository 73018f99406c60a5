#!/usr/bin/env python3
"""Lists the import edges between the crate's top-level modules and any circles; exits 1 on a circle.

A file's module is its first path part under src/ (src/x.rs and src/x/** are `x`). An edge x -> y is any
`crate::y` in x's code outside comments, `use crate::{y, ...}` groups included. Test code (files named
tests.rs, and the `#[cfg(test)] mod tests` at a file's end) is checked too but its edges are marked, since
a test may reach sideways without making a circle in the shipped code. `main.rs` is the binary, on top.
Usage: .ci/imports.py [--order]   (--order also prints the modules bottom to top, level by level)
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
LIB_ROOT = {"lib", "main"}


def module_of(path):
    rel = path.relative_to(SRC)
    return rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]


def strip_comments(text):
    # Line comments only: the crate has no block comments, and a `//` inside a string would be an edge
    # hidden, never one invented.
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def split_test(path, text):
    """(shipped code, test code) of one file."""
    if path.name == "tests.rs" or "tests" in path.relative_to(SRC).parts[:-1]:
        return "", text
    match = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests\b", text, re.M)
    if not match:
        return text, ""
    return text[: match.start()], text[match.start():]


def targets(code):
    found = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code))
    # `use crate::{a, b::c, d::{e, f}}`: the first name of each top-level item of the group.
    for start in [m.end() for m in re.finditer(r"\bcrate::\{", code)]:
        depth, item, items = 1, "", []
        for ch in code[start:]:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            if depth == 1 and ch == ",":
                items.append(item)
                item = ""
            elif depth >= 1:
                item += ch
        items.append(item)
        for it in items:
            name = re.match(r"\s*([a-z_][a-z0-9_]*)", it)
            if name and name.group(1) != "self":
                found.add(name.group(1))
    return found


def edges():
    shipped, tests = defaultdict(set), defaultdict(set)
    modules = set()
    for path in sorted(SRC.rglob("*.rs")):
        src = module_of(path)
        modules.add(src)
        code, test = split_test(path, strip_comments(path.read_text()))
        for dst in targets(code):
            if dst != src and dst not in ("fuzz_config",):
                shipped[src].add(dst)
        for dst in targets(test):
            if dst != src and dst not in ("fuzz_config",):
                tests[src].add(dst)
    return modules - LIB_ROOT, shipped, tests


def cycles(modules, graph):
    """Every elementary circle, each once, from its smallest module name."""
    found = []

    def walk(start, node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append(path + [start])
            elif nxt > start and nxt not in path and nxt in modules:
                walk(start, nxt, path + [nxt])

    for start in sorted(modules):
        walk(start, start, [start])
    return found


def levels(modules, graph):
    """Modules bottom to top, in levels: each imports only from the levels below it."""
    level = {}

    def depth(m, seen=()):
        if m not in level:
            below = [depth(d, seen + (m,)) for d in graph.get(m, ()) if d in modules and d not in seen]
            level[m] = 1 + max(below, default=-1)
        return level[m]

    for m in modules:
        depth(m)
    return [sorted(m for m in modules if level[m] == n) for n in range(max(level.values()) + 1)]


def main():
    modules, shipped, tests = edges()
    for src in sorted(set(shipped) | set(tests)):
        dsts = sorted(shipped.get(src, set()) | tests.get(src, set()))
        marked = [d if d in shipped.get(src, ()) else d + "(test)" for d in dsts]
        print(f"{src} -> {', '.join(marked)}")
    status = 0
    importers = sorted(s for s, d in shipped.items() if "proxy" in d and s != "main")
    if importers:
        print(f"importing proxy (only main may): {', '.join(importers)}")
        status = 1
    both = {m: shipped.get(m, set()) | tests.get(m, set()) for m in modules | LIB_ROOT}
    for label, graph in (("circle", shipped), ("circle with test code", both)):
        for circle in cycles(modules, graph):
            print(f"{label}: {' -> '.join(circle)}")
            status = 1
    if status == 0:
        print("no circles")
    if "--order" in sys.argv and status == 0:
        for n, names in enumerate(levels(modules, shipped)):
            print(f"level {n}: {', '.join(names)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
