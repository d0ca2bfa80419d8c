#!/usr/bin/env python3
"""Licences of the crates linked into ferry, from `cargo metadata` on stdin.

Follows the resolve graph from the root package along normal dependencies
(build scripts and dev-dependencies are not in the binary) and prints, for
each crate, its name, version, licence expression and the text of every
licence file in its source directory.
"""
import json
import os
import sys

LICENCE_PREFIXES = ("license", "licence", "copying", "notice", "unlicense")


def main():
    meta = json.load(sys.stdin)
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    out = sys.stdout
    out.write("Licences of the code in the ferry binary\n")
    out.write("=========================================\n\n")
    crates = sorted((packages[i] for i in seen), key=lambda p: (p["name"], p["version"]))
    for p in crates:
        out.write(f"{p['name']} {p['version']}: {p.get('license') or 'see the file below'}\n")
    # One copy of each distinct text, with the crates whose file it is.
    texts = {}
    for p in crates:
        if p["id"] == root:
            continue
        d = os.path.dirname(p["manifest_path"])
        files = sorted(
            f for f in os.listdir(d)
            if f.lower().startswith(LICENCE_PREFIXES) and os.path.isfile(os.path.join(d, f))
        )
        if p.get("license_file"):
            lf = os.path.relpath(os.path.join(d, p["license_file"]), d)
            if lf not in files:
                files.append(lf)
        for f in files:
            with open(os.path.join(d, f), encoding="utf-8", errors="replace") as fh:
                text = fh.read().strip()
            texts.setdefault(text, []).append(f"{p['name']} {p['version']} ({f})")
    for text, owners in texts.items():
        out.write(f"\n{'-' * 72}\n")
        for o in owners:
            out.write(f"{o}\n")
        out.write(f"{'-' * 72}\n\n{text}\n")
    missing = [p["name"] for p in crates if p["id"] != root and not p.get("license") and not p.get("license_file")]
    if missing:
        sys.exit("licences.py: no licence declared by " + ", ".join(missing))


if __name__ == "__main__":
    main()
