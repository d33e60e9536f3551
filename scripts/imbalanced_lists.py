"""Make an imbalanced copy of a training list: the named classes keep only a fraction of their videos.

    python scripts/imbalanced_lists.py --list ROOT/fold1_train.txt --labels 0 1 --keep 0.5 --out-file OUT.txt

Keeps the first ``ceil(keep * n)`` lines of each named class, in list order (deterministic), and every line
of the other classes. Used for the class-balance measurements (README, Accuracy): UT-Interaction's folds
with half of classes 0 and 1's training clips dropped.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path


def imbalanced_lines(lines: list[str], classes: set[int], keep: float) -> list[str]:
    """``lines`` ("path label", one video each) with only the first ``ceil(keep * n)`` of each class in ``classes``."""
    totals = Counter(int(line.split()[-1]) for line in lines)
    seen: Counter[int] = Counter()
    kept = []
    for line in lines:
        label = int(line.split()[-1])
        seen[label] += 1
        if label not in classes or seen[label] <= math.ceil(keep * totals[label]):
            kept.append(line)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", type=Path, required=True)
    parser.add_argument("--labels", type=int, nargs="+", required=True)
    parser.add_argument("--keep", type=float, required=True, help="fraction of the named classes' videos kept")
    parser.add_argument("--out-file", type=Path, required=True, help="the list to write")
    args = parser.parse_args()
    lines = [line for line in args.list.read_text().splitlines() if line.strip()]
    kept = imbalanced_lines(lines, set(args.labels), args.keep)
    args.out_file.parent.mkdir(parents=True, exist_ok=True)
    args.out_file.write_text("\n".join(kept) + "\n")
    counts = sorted(Counter(int(line.split()[-1]) for line in kept).items())
    print(f"{args.out_file}: {len(kept)} of {len(lines)} videos; per class {counts}")


if __name__ == "__main__":
    main()
