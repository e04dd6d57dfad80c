"""Fuzz certify's loaders: checkpoints, ONNX files and graphs, results CSVs, eps and lists.

Runs each target of :mod:`tests.fuzz_targets` (or the ones named) for ``--seconds``
and prints, per target, how many inputs ran and how many crashed: let out an exception
that is not one of the project's errors, or an error message of more than one line.
The first input of each distinct crash (exception type and project frame) is saved in
``--crashes``, with its traceback beside it, to become a regression test.

With atheris installed (``pip install -e .[fuzz]``), each target runs in its own process
under libFuzzer, coverage-guided on certify's own modules, from a corpus seeded with
real files (the bundled checkpoint, the public ONNX models beside the checkout when
present, results files written by certify's writer, eps strings); a process that dies
(a native crash, a timeout, running out of memory) is restarted for the time left and
libFuzzer's input is kept. Without atheris, or with ``--engine random``, the inputs are
random mutations of the seeds, from ``--seed``.

    nice -n 15 python benchmarks/fuzz.py --seconds 60 --seconds-for onnx_graph=240
    python benchmarks/fuzz.py eps results_csv --seconds 10 --engine random
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Written by a worker every so often and when its time is up; read by the parent.
_STATS = "stats.json"
_STATS_EVERY = 2.0  # seconds
_RSS_LIMIT_MB = 6144  # torch, onnx and onnxruntime alone take about 1 GB
_INPUT_TIMEOUT = 60  # seconds one input may take before libFuzzer calls it a hang
_RESTARTS = 5


class _Recorder:
    """Counts inputs and keeps the first input of each distinct crash."""

    def __init__(self, name: str, crashes: Path, stats: Path, seconds: float) -> None:
        self.name, self.crashes, self.stats, self.seconds = name, crashes, stats, seconds
        self.inputs = 0
        self.crashed = 0
        self.signatures: dict[str, str] = {}
        self.start = 0.0
        self._written = 0.0
        self._load_signatures()

    def _load_signatures(self) -> None:
        # A restarted worker goes on counting from what the last one wrote.
        if self.stats.is_file():
            old = json.loads(self.stats.read_text())
            self.inputs, self.crashed = old["inputs"], old["crashed"]
            self.signatures = old["signatures"]

    def record(self, data: bytes, crash) -> None:
        from tests.fuzz_targets import input_id

        self.inputs += 1
        if crash is None:
            return
        self.crashed += 1
        if crash.signature in self.signatures:
            return
        name = f"{self.name}-{input_id(data)}"
        self.crashes.mkdir(parents=True, exist_ok=True)
        (self.crashes / name).write_bytes(data)
        (self.crashes / f"{name}.txt").write_text(f"{crash.signature}\n\n{crash.trace}")
        self.signatures[crash.signature] = name
        self.write()

    def elapsed(self) -> float:
        return time.monotonic() - self.start if self.start else 0.0

    def write(self) -> None:
        self._written = time.monotonic()
        stats = {
            "inputs": self.inputs,
            "crashed": self.crashed,
            "signatures": self.signatures,
            "seconds": self.elapsed(),
        }
        tmp = self.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, self.stats)

    def due(self) -> bool:
        return time.monotonic() - self._written > _STATS_EVERY


def _quiet() -> None:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)


# ------------------------------------------------------------------- workers


def _atheris_worker(args: argparse.Namespace) -> None:
    """One target under libFuzzer, until its time is up (never returns)."""
    import atheris

    with atheris.instrument_imports(include=["certify", "model_zoo", "reports"]):
        from tests import fuzz_targets
    _quiet()
    target = fuzz_targets.TARGETS[args.worker]
    work = Path(args.work)
    recorder = _Recorder(target.name, Path(args.crashes), work / _STATS, args.seconds)
    previous = _previous_seconds(work / _STATS)

    def one_input(data: bytes) -> None:
        if not recorder.start:
            recorder.start = time.monotonic() - previous
        recorder.record(data, fuzz_targets.crash_of(target, data))
        if recorder.due() or recorder.elapsed() >= args.seconds:
            recorder.write()
            if recorder.elapsed() >= args.seconds:
                fuzz_targets.cleanup()  # os._exit skips the atexit hook
                sys.stdout.flush()
                os._exit(0)

    corpus = work / "corpus"
    dictionary = work / "tokens.dict"
    dictionary.write_text("".join(f'"{_escaped(t)}"\n' for t in target.tokens))
    libfuzzer = [
        sys.argv[0],
        *([f"-dict={dictionary}"] if target.tokens else []),
        f"-max_len={target.max_len}",
        f"-rss_limit_mb={_RSS_LIMIT_MB}",
        f"-timeout={_INPUT_TIMEOUT}",
        f"-seed={args.seed}",
        f"-artifact_prefix={Path(args.crashes) / target.name}-native-",
        str(corpus),
    ]
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()


def _escaped(token: bytes) -> str:
    """A token in libFuzzer's dictionary syntax (printable ASCII or \\xNN)."""
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)


def _previous_seconds(stats: Path) -> float:
    return json.loads(stats.read_text())["seconds"] if stats.is_file() else 0.0


def _random_run(name: str, seconds: float, crashes: Path, work: Path, seed: int) -> dict:
    """One target with random mutations of its seeds, in this process."""
    import random

    from tests import fuzz_targets

    _quiet()
    target = fuzz_targets.TARGETS[name]
    recorder = _Recorder(name, crashes, work / _STATS, seconds)
    rng = random.Random(seed)
    pool = target.seeds()
    recorder.start = time.monotonic()
    for data in pool:
        recorder.record(data, fuzz_targets.crash_of(target, data))
    while recorder.elapsed() < seconds:
        data = fuzz_targets.mutate(rng.choice(pool), rng, target.tokens, pool)[: target.max_len]
        recorder.record(data, fuzz_targets.crash_of(target, data))
    recorder.write()
    return json.loads(recorder.stats.read_text())


# ------------------------------------------------------------------- the parent


def _atheris_run(name: str, seconds: float, crashes: Path, work: Path, seed: int) -> dict:
    """Run one target's worker process, restarting it after a native crash."""
    from tests import fuzz_targets

    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in fuzz_targets.TARGETS[name].seeds():
        (corpus / f"seed-{fuzz_targets.input_id(data)}").write_bytes(data)
    log = work / "libfuzzer.log"
    crashes.mkdir(parents=True, exist_ok=True)
    native = 0
    for attempt in range(_RESTARTS + 1):
        artifacts = set(crashes.glob(f"{name}-native-*"))
        left = seconds - _previous_seconds(work / _STATS)
        if left <= 0:
            break
        command = [
            sys.executable, __file__, "--worker", name, "--seconds", str(seconds),
            "--crashes", str(crashes), "--work", str(work), "--seed", str(seed + attempt),
        ]  # fmt: skip
        with open(log, "a") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode == 0:
            break
        if not set(crashes.glob(f"{name}-native-*")) - artifacts:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise SystemExit(f"{name}: the fuzzing process failed: {' '.join(tail)} (see {log})")
        native += 1
        print(f"  {name}: the process died (exit {done.returncode}), input kept", flush=True)
    stats = json.loads((work / _STATS).read_text()) if (work / _STATS).is_file() else {}
    stats.setdefault("inputs", 0)
    stats.setdefault("crashed", 0)
    stats.setdefault("signatures", {})
    stats["native"] = native
    stats["corpus"] = len(list(corpus.iterdir()))
    return stats


def _engine(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "random"
    return "atheris"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=float, default=30.0, help="fuzzing time per target")
    parser.add_argument(
        "--seconds-for",
        action="append",
        default=[],
        metavar="TARGET=SECONDS",
        help="another time for one target (repeatable)",
    )
    parser.add_argument("--crashes", type=Path, help="folder for crashing inputs")
    parser.add_argument(
        "--models-dir", type=Path, help="ONNX models to seed the ONNX targets with (e.g. ~/models)"
    )
    parser.add_argument(
        "--work", type=Path, help="folder for corpora and logs (default: a temp folder)"
    )
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-corpus", action="store_true", help="start from the last corpus")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.models_dir is not None:
        os.environ["CERTIFY_FUZZ_MODELS"] = str(args.models_dir)  # the workers inherit it
    if args.worker:
        _atheris_worker(args)
        return 0

    from tests.fuzz_targets import TARGETS

    if args.list:
        print("\n".join(TARGETS))
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    budget = dict.fromkeys(TARGETS, args.seconds)
    for item in args.seconds_for:
        name, _, value = item.partition("=")
        if name not in TARGETS or not value.replace(".", "", 1).isdigit():
            parser.error(f"--seconds-for {item!r}: give TARGET=SECONDS, TARGET one of the targets")
        budget[name] = float(value)
    engine = _engine(args.engine)
    root = args.work or Path(tempfile.gettempdir()) / "certify-fuzz"
    crashes = args.crashes or root / "crashes"
    version = f"{engine} {_engine_version(engine)}".strip()
    print(f"engine {version}, torch {_torch_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip
    print(f"{'target':<18} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'crashed':>8} "
          f"{'distinct':>8}", flush=True)  # fmt: skip
    total = 0
    found: dict[str, str] = {}
    for name in args.targets or list(TARGETS):
        work = root / name
        if not args.keep_corpus and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        (work / _STATS).unlink(missing_ok=True)
        run = _atheris_run if engine == "atheris" else _random_run
        stats = run(name, budget[name], crashes, work, args.seed)
        seconds = max(stats.get("seconds", 0.0), 1e-9)
        distinct = len(stats["signatures"]) + stats.get("native", 0)
        print(f"{name:<18} {stats['inputs']:>10} {seconds:>8.0f} {stats['inputs'] / seconds:>9.0f} "
              f"{stats['crashed']:>8} {distinct:>8}", flush=True)  # fmt: skip
        total += stats["inputs"]
        found |= {sig: file for sig, file in stats["signatures"].items()}
    print(f"{'all':<18} {total:>10}")
    for signature, file in found.items():
        print(f"crash: {signature}  ({crashes / file})")
    native = sorted(crashes.glob("*-native-*")) if crashes.is_dir() else []
    for file in native:
        print(f"native crash, timeout or out of memory: {file}")
    return 1 if found or native else 0


def _engine_version(engine: str) -> str:
    if engine != "atheris":
        return ""
    from importlib.metadata import version

    return version("atheris")


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    sys.exit(main())
