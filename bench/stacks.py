"""Summarize py-spy collapsed stacks (`--format raw`): `python -m bench.stacks FILE [--top N]`.

Prints the functions with the most samples on top of the stack (self) and anywhere
on it (inclusive), as a share of all samples. Idle samples (the event loop waiting
in `select`) are left out by py-spy unless it ran with `--idle`, so shares are of busy time.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def load(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" → "func (to/file.py)": one entry per function, not per line
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(where.split('/')[-2:])})" if where else name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="inclusive table: only frames containing this text")
    args = parser.parse_args()
    stacks = load(args.file)
    total = sum(c for _, c in stacks) or 1
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if not frames:
            continue
        top = _short(frames[-1])
        self_counts[top] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count
    print(f"{args.file}: {total} busy samples (`Runner.run` as self = uvloop's own C code)")
    print("\nself (top of stack):")
    for f, c in self_counts.most_common(args.top):
        print(f"  {100 * c / total:5.1f}%  {f}")
    print("\ninclusive:")
    shown = 0
    for f, c in incl.most_common():
        if args.match and args.match not in f:
            continue
        print(f"  {100 * c / total:5.1f}%  {f}")
        shown += 1
        if shown >= args.top:
            break


if __name__ == "__main__":
    main()
