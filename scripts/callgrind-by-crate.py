#!/usr/bin/env python3
"""Sums a callgrind output file's self cost (Ir) by crate and prints it per operation.

Usage: callgrind-by-crate.py CALLGRIND_OUT OPERATIONS [TOP]

A function's crate comes from its source path (`.cargo/registry/src/*/<crate>-<version>/`, the
project's own `src/`, libc's files); code from the Rust standard library that was inlined into or
instantiated for another crate (a generic `Vec` growing inside h2) is shown as `std:<crate>` after the
crate its function name starts with. Standard library only: runs with any Python 3.
"""
import collections
import re
import sys


def self_costs(path):
    """(file, function) -> self Ir, from callgrind's compressed format."""
    files, fns = {}, {}
    cur_file = cur_fn = inline_file = None
    after_calls = False
    costs = collections.Counter()

    def name(table, text):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", text)
        if not m:
            return text
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), "?")

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fl="):
                cur_file, inline_file = name(files, line[3:]), None
            elif line.startswith(("fi=", "fe=")):
                inline_file = name(files, line[3:])
            elif line.startswith("fn="):
                cur_fn, inline_file = name(fns, line[3:]), None
            elif line.startswith(("cfl=", "cfi=")):
                name(files, line[4:])
            elif line.startswith("cfn="):
                name(fns, line[4:])
            elif line.startswith("calls="):
                after_calls = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    costs[(inline_file or cur_file, cur_fn)] += int(parts[1])
    return costs


def crate_of(path, function):
    path = path or ""
    m = re.search(r"registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+", path)
    if m:
        return m.group(1)
    if re.search(r"/src/(api|bench|lease|mvcc|server|snap|wal|watch)/|/src/[a-z_]+\.rs$", path) and "/rustc/" not in path:
        return "mini-etcd"
    if "libc.so" in path or "sysdeps" in path or path.startswith("./"):
        return "libc"
    if "/out/" in path and path.endswith(".rs"):
        return "prost"  # code generated from the .proto files
    if "/rustc/" in path or "/rust/deps/" in path:
        # The first crate the function's name mentions that is not the standard library's own.
        for m in re.finditer(r"(?:^|[<\s&(,*])([a-z_][a-z_0-9]*)::", function or ""):
            if m.group(1) not in ("core", "alloc", "std"):
                return "std:" + m.group(1).replace("_", "-")
        return "std"
    return path


# Crates grouped by the layer of the server they belong to.
LAYERS = {
    "HTTP/2 and gRPC": {"h2", "http", "hyper", "hyper-util", "tonic", "bytes", "slab", "tokio-util",
                        "http-body", "http-body-util", "tower", "axum", "axum-core", "indexmap",
                        "httparse", "futures-util", "futures-core", "pin-project"},
    "memory (allocator, memcpy)": {"libmimalloc-sys", "mimalloc", "libc"},
    "async runtime": {"tokio", "parking-lot", "parking-lot-core"},
    "storage (redb)": {"redb"},
    "Raft (raft-rs)": {"raft", "raft-proto", "protobuf", "slog"},
    "protobuf (prost)": {"prost", "prost-types"},
    "mini-etcd": {"mini-etcd"},
}


def layer_of(crate):
    base = crate[4:] if crate.startswith("std:") else crate
    for layer, crates in LAYERS.items():
        if base in crates:
            return layer
    return "other (std, hashing, logging, ...)"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    costs = self_costs(sys.argv[1])
    ops = int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    total = sum(costs.values())
    by_crate = collections.Counter()
    for (path, function), ir in costs.items():
        by_crate[crate_of(path, function)] += ir
    print(f"{total:,} instructions = {total / ops:,.0f} per operation (user space)")
    by_layer = collections.Counter()
    for crate, ir in by_crate.items():
        by_layer[layer_of(crate)] += ir
    print("by layer:")
    for layer, ir in by_layer.most_common():
        print(f"  {layer:34s} {ir / ops:9,.0f}  {100 * ir / total:5.1f} %")
    print("by crate:")
    for crate, ir in by_crate.most_common(top):
        print(f"  {crate:34s} {ir / ops:9,.0f}  {100 * ir / total:5.1f} %")


if __name__ == "__main__":
    main()
