#!/usr/bin/env python3
"""Checks every link in the repository's Markdown (README.md, docs/, crates/*/README.md).

The repository must stand alone: a link may point at a file inside it (which must exist,
and whose heading must exist when the link names one), or at the demo on loopback
(http://127.0.0.1:..., http://localhost:...). Anything else -- a path that leaves the
repository, a web address, linked or bare (a citation goes in a code span) -- is reported, with the file and line. Exit 1 when anything is.

    scripts/check-links.py [FILE.md ...]
"""

import os
import re
import sys
from urllib.parse import unquote, urlparse

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
SKIP_DIRS = {".git", "target", "node_modules", "fuzz"}

INLINE = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
AUTOLINK = re.compile(r"<((?:https?|ftp|file)://[^>\s]+)>")
# A bare address, which renderers turn into a link (a citation belongs in a code span).
BARE = re.compile(r"(?<![(<\w])((?:https?|ftp|file)://[^\s<>)`|]+)")
FENCE = re.compile(r"^\s*(```|~~~)")
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def markdown_files(args):
    if args:
        return [os.path.realpath(a) for a in args]
    found = []
    for top in ("README.md", "docs", "crates"):
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            found.append(path)
        for base, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            found += [os.path.join(base, f) for f in files if f.endswith(".md")]
    return sorted(found)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        seen, result, in_fence = {}, set(), False
        with open(path, encoding="utf-8") as f:
            for line in f:
                if FENCE.match(line):
                    in_fence = not in_fence
                    continue
                match = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
                if match:
                    base = slug(match.group(1))
                    count = seen.get(base, 0)
                    seen[base] = count + 1
                    result.add(base if count == 0 else f"{base}-{count}")
        cache[path] = result
    return cache[path]


def links(path):
    in_fence = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            if in_fence:
                continue
            code_free = re.sub(r"`[^`]*`", "", line)
            for pattern in (INLINE, AUTOLINK):
                for match in pattern.finditer(code_free):
                    yield number, match.group(1)
            for match in BARE.finditer(INLINE.sub("", AUTOLINK.sub("", code_free))):
                yield number, match.group(1).rstrip(".,;:")
            match = REFERENCE.match(code_free)
            if match:
                yield number, match.group(1)


def problem(source, target):
    url = urlparse(target)
    if url.scheme in ("http", "https"):
        host = url.hostname or ""
        return None if host in LOOPBACK else "a web address outside the repository"
    if url.scheme or target.startswith("//"):
        return f"a {url.scheme or 'network'} link outside the repository"
    path_part, _, fragment = target.partition("#")
    resolved = os.path.realpath(
        os.path.join(os.path.dirname(source), unquote(path_part)) if path_part else source
    )
    if resolved != ROOT and not resolved.startswith(ROOT + os.sep):
        return "a path that leaves the repository"
    if not os.path.exists(resolved):
        return "a file that does not exist"
    if fragment and resolved.endswith(".md") and fragment.lower() not in anchors(resolved):
        return f"no heading #{fragment} in {os.path.relpath(resolved, ROOT)}"
    return None


def main(args):
    files = markdown_files(args)
    count, bad = 0, 0
    for path in files:
        for number, target in links(path):
            count += 1
            why = problem(path, target)
            if why:
                bad += 1
                print(f"{os.path.relpath(path, ROOT)}:{number}: {target}: {why}")
    print(f"check-links: {len(files)} files, {count} links, {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
