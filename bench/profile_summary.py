"""
Summarise a py-spy profile recorded with `--format raw` (collapsed stacks):
the functions with the most samples on top of the stack (self) and anywhere
in it (total), as Markdown tables with shares of all samples.

    py-spy record --pid PID --rate 250 --duration 15 --nolineno \\
        --format raw -o profile.txt
    python3 bench/profile_summary.py profile.txt --top 15
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# "function (path/to/file.py)" as py-spy writes a frame; the path is cut to
# what identifies it (from the package or the standard library on).
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^()]*)\)$")
_ROOTS = ("gatewaykit/", "twisted/", "prometheus_client/", "httptools/", "python3.11/")


def short_frame(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["path"]
    for root in _ROOTS:
        index = path.rfind(root)
        if index != -1:
            path = path[index:].removeprefix("python3.11/")
            break
    path = re.sub(r":\d+$", "", path)
    return f"{match['function']} ({path})"


def summarise(lines: list[str]) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [short_frame(f) for f in stack.split(";") if f]
        # The first frame is the thread ("process 123:..." / "thread (0x...)").
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, own, inclusive


def table(title: str, counts: Counter[str], total: int, top: int) -> str:
    rows = [f"| {title} | samples | share |", "| --- | ---: | ---: |"]
    for frame, count in counts.most_common(top):
        rows.append(f"| `{frame}` | {count:,} | {100 * count / total:.1f}% |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--match", default="", help="only functions whose frame contains this (total table)"
    )
    parser.add_argument(
        "--hide-above",
        type=float,
        default=90.0,
        help="leave out of the total table frames in more than this %% of the samples"
        " (the reactor loop every sample is in)",
    )
    args = parser.parse_args()
    total, own, inclusive = summarise(args.profile.read_text().splitlines())
    if not total:
        sys.exit("no samples")
    print(f"{total:,} samples\n")
    print(table("self (on top of the stack)", own, total, args.top))
    print()
    inclusive = Counter(
        {
            frame: count
            for frame, count in inclusive.items()
            if args.match in frame and 100 * count / total <= args.hide_above
        }
    )
    print(table("total (anywhere in the stack)", inclusive, total, args.top))


if __name__ == "__main__":
    main()
