#!/usr/bin/env python3
"""Fails when docs/ARCHITECTURE.md's module map misses a file or folder of the source tree.

Every `.rs` file and every folder under src/ and crates/*/src/ must be named in the map (the
first fenced block after "## Module map"): a file by its name (`sql.rs`), a folder by its name
and a slash (`storage/`); `mod.rs`, `lib.rs` and `main.rs` of a named folder count as named.
A name the map gives that the tree no longer has is reported too.

    scripts/check-module-map.py
"""

import os
import re
import sys

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
DOC = os.path.join(ROOT, "docs", "ARCHITECTURE.md")
KEPT = {"mod.rs", "lib.rs", "main.rs"}
NAME = re.compile(r"(?<![\w.-])([a-z_][a-z0-9_]*(?:\.rs|/))")


def map_text():
    text = open(DOC, encoding="utf-8").read()
    after = text.split("## Module map", 1)[1]
    return after.split("```", 2)[1]


def tree_names():
    roots = [os.path.join(ROOT, "src")]
    crates = os.path.join(ROOT, "crates")
    for crate in sorted(os.listdir(crates)):
        roots.append(os.path.join(crates, crate, "src"))
    names = {}
    for root in roots:
        for base, dirs, files in os.walk(root):
            rel = os.path.relpath(base, ROOT)
            for d in dirs:
                names.setdefault(d + "/", os.path.join(rel, d))
            for f in files:
                if f.endswith(".rs") and f not in ("mod.rs", "lib.rs"):
                    names.setdefault(f, os.path.join(rel, f))
    return names


def main():
    mapped = set(NAME.findall(map_text()))
    tree = tree_names()
    missing = sorted(path for name, path in tree.items() if name not in mapped)
    # Only file names can be told apart from prose ("owns/create_kek", "templates/").
    stale = sorted(n for n in mapped - set(tree) if n.endswith(".rs") and n not in KEPT)
    for path in missing:
        print(f"check-module-map: {path} is not in docs/ARCHITECTURE.md's module map")
    for name in stale:
        print(f"check-module-map: the module map names {name}, which the tree does not have")
    print(f"check-module-map: {len(tree)} names in the tree, {len(missing) + len(stale)} problems")
    return 1 if missing or stale else 0


if __name__ == "__main__":
    sys.exit(main())
