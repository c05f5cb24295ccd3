#!/usr/bin/env python3
"""Fails when modules of the library import each other in a circle.

Reads every file under src/ (the library: src/lib.rs and what it declares; the binary's
src/main.rs and src/cli/ sit above it and are left out), maps each to its module path, and
draws an edge A -> B whenever A names `crate::B...` (or `super::` that resolves to B).
Edges between a module and its own ancestors or descendants are left out: a parent
declares and routes to its children, and children share their parent's helpers. Any other
circle -- between sibling modules, or across the tree -- is reported with the names that
close it. Exit 1 when there is one.

    scripts/check-cycles.py
"""

import os
import re
import sys

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
SRC = os.path.join(ROOT, "src")
BINARY_ONLY = {"main.rs", "cli"}
PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}", re.S)


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


def library_files():
    for base, dirs, files in os.walk(SRC):
        rel = os.path.relpath(base, SRC)
        top = rel.split(os.sep)[0]
        if top in BINARY_ONLY:
            dirs[:] = []
            continue
        for name in files:
            if name.endswith(".rs") and not (rel == "." and name in BINARY_ONLY):
                yield os.path.join(base, name)


def strip_comments_and_strings(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def referenced(module, text):
    """Every module path a file names, as tuples, resolved against its own module."""
    paths = []
    for root, prefix, names in GROUP.findall(text):
        for name in names.split(","):
            name = name.strip().split(" as ")[0].strip()
            if name and name not in ("self", "*"):
                paths.append((root, prefix + "::" + name.split("::")[0]))
    paths += PATH.findall(text)
    for root, rest in paths:
        parts = tuple(p for p in rest.split("::") if p)
        base = () if root == "crate" else module[:-1]
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
        yield base + parts


def build_graph(modules, files):
    graph = {m: {} for m in modules}
    for path in files:
        source = module_of(path)
        text = strip_comments_and_strings(open(path, encoding="utf-8").read())
        for target in referenced(source, text):
            while target and target not in modules:
                target = target[:-1]
            if not target or target == source:
                continue
            related = target[: len(source)] == source or source[: len(target)] == target
            if not related:
                graph[source].setdefault(target, True)
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def main():
    files = list(library_files())
    modules = {module_of(f) for f in files}
    graph = build_graph(modules, files)
    edges = sum(len(v) for v in graph.values())
    cycle = find_cycle(graph)
    name = lambda m: "crate::" + "::".join(m) if m else "crate"
    if cycle:
        print("check-cycles: import circle: " + " -> ".join(name(m) for m in cycle))
        return 1
    print(f"check-cycles: {len(modules)} modules, {edges} imports between them, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
