"""Branch and bound on the public VNN-COMP 2021 ``mnistfc`` instances, against their
known verdicts and alpha-beta-CROWN's 2021 results.

Reads ``vnncomp2021_mnistfc.tsv`` (see the README beside it: 60 instances on the two
public MLPs, each an MNIST test image and an eps), runs ``certify.evaluate`` with
``crown,bab`` on each image with the instance's time limit (or ``--timeout``), and prints
the machine, then per model and eps: robust / not robust / undecided, the median seconds
of the decided ones, alpha-beta-CROWN's decided count, and every contradiction with a
known verdict (there must be none). ``--branching`` compares the heuristics.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

import certify
from certify.bounds.options import BabLimits, BabOptions, Branching
from certify.evaluation.config import EvalConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument(
        "--instances", type=Path, default=SHARED / "verification" / "vnncomp2021_mnistfc.tsv"
    )
    parser.add_argument("--timeout", type=float, help="seconds per instance (default: its own)")
    parser.add_argument("--branching", default="fsb", choices=["fsb", "babsr"])
    parser.add_argument("--limit", type=int, help="run only the first N instances")
    args = parser.parse_args()
    with args.instances.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[: args.limit]
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"branching {args.branching}, timeout {args.timeout or 'per instance'}\n")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    contradictions = []
    for row in rows:
        timeout = args.timeout or float(row["timeout_s"])
        t0 = time.perf_counter()
        config = EvalConfig(
            methods="crown,bab", start=int(row["index"]), num_samples=1,
            bab=BabOptions(BabLimits(timeout), Branching(args.branching)),
        )  # fmt: skip
        result = certify.evaluate(
            args.models_dir / row["model"], "mnist", row["eps"], config, data_dir=args.data_dir
        )
        seconds = time.perf_counter() - t0
        o = result.outcomes
        if bool(o.verified_any()[0]):
            verdict = "robust"
        elif not bool(o.pgd_robust[0]):
            verdict = "not robust"
        else:
            verdict = "undecided"
        known = row["known_verdict"]
        if verdict != "undecided" and known in ("robust", "not robust") and verdict != known:
            contradictions.append((row["model"], row["index"], row["eps"], verdict, known))
        groups[(row["model"], row["eps"])].append((verdict, seconds, row["abcrown_2021"]))
        print(f"{row['model']} {row['index']} eps {row['eps']}: {verdict} ({seconds:.1f} s), "
              f"known {known}, alpha-beta-CROWN {row['abcrown_2021']}", flush=True)  # fmt: skip
    print("\n| model | eps | robust | not robust | undecided | median s (decided) | "
          "alpha-beta-CROWN 2021 decided |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for (model, eps), found in groups.items():
        verdicts = [v for v, _, _ in found]
        decided = [s for v, s, _ in found if v != "undecided"]
        theirs = sum(a != "undecided" for _, _, a in found)
        median = f"{statistics.median(decided):.1f}" if decided else "-"
        counts = [verdicts.count(v) for v in ("robust", "not robust", "undecided")]
        cells = [model, eps, *map(str, counts), median, f"{theirs} of {len(found)}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\ncontradictions with known verdicts: {len(contradictions)}")
    for c in contradictions:
        print("  ", c)


if __name__ == "__main__":
    main()
