"""Summarize py-spy collapsed stacks (``--format raw``): where the samples fall.

    python bench/profile_summary.py PROFILE.txt [--top 25] [--match fleet/] [--exclude X]

Prints total samples, the top leaf frames (self time), and the top frames by inclusive
samples whose file matches ``--match`` (fleet's own functions by default), and the
same by module (paramiko/transport.py, celery/..., ...).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_FRAME_FILE = re.compile(r"\(([^:()]+)(?::\d+)?\)$")
_LINE_NO = re.compile(r":\d+\)$")


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    frames = stack.split(";")
    if frames and frames[0].startswith("thread ("):
        frames = frames[1:]  # thread id; the next one is the thread name
    return frames, int(count)


def _module(frame: str) -> str:
    found = _FRAME_FILE.search(frame)
    if not found:
        return frame
    path = found.group(1)
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 1 else path


def summarize(path: Path, top: int, match: str, exclude: str = "") -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        if exclude and any(exclude in f for f in frames):
            continue
        total += count
        frames = [_LINE_NO.sub(")", f) for f in frames]
        if len(frames) > 1:
            self_time[frames[-1]] += count
            by_module[_module(frames[-1])] += count
        else:
            self_time["(thread without Python frames)"] += count
        for frame in set(frames[1:]):
            if match in frame:
                inclusive[frame] += count
    out = [f"{path}: {total} samples"]
    out.append("self (leaf frames):")
    out += [f"  {c:6d} {100 * c / total:5.1f}%  {f}" for f, c in self_time.most_common(top)]
    out.append("self by module:")
    out += [f"  {c:6d} {100 * c / total:5.1f}%  {m}" for m, c in by_module.most_common(top)]
    out.append(f"inclusive, frames matching {match!r}:")
    out += [f"  {c:6d} {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="fleet/")
    parser.add_argument(
        "--exclude",
        default="",
        help="drop stacks with a frame containing this (e.g. Transport.run: paramiko's "
        "reader threads, which py-spy counts as busy while they wait in recv)",
    )
    args = parser.parse_args(argv)
    for path in args.profiles:
        print(summarize(path, args.top, args.match, args.exclude))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
