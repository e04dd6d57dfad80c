"""``certify eval``: clean, PGD and verified error of a checkpoint or ONNX model."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from certify.bounds.methods import BoundMethod
from certify.bounds.options import AlphaCrownOptions, BabLimits, BabOptions, Branching
from certify.commands.base import CertifyCommand, write_soundness_evidence
from certify.core.datasets import Dataset
from certify.core.devices import DeviceChoice
from certify.core.errors import SoundnessError, UsageError
from certify.evaluation.config import (
    DEFAULT_PGD,
    DEFAULT_RADIUS_TOLERANCE,
    EvalConfig,
    EvalMode,
    config_from_flat,
)
from certify.evaluation.images import ProgressFn

# The CLI's defaults are the library's: EvalConfig() and the options it holds.
_DEFAULT = EvalConfig()

_METHODS_HELP = f"Comma-separated bound methods: {', '.join(m.value for m in BoundMethod)}."
_DATASETS = ", ".join(d.value for d in Dataset)
_OUTSIDE = "that normalize outside."
_DEVICES = ", ".join(d.value for d in DeviceChoice)


def _floats(ctx: click.Context, param: click.Parameter, text: str | None):
    """Comma-separated numbers (``0.5,0.5,0.5``) as a tuple."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated numbers, e.g. 0.5,0.5") from None
    if not values:
        raise click.BadParameter("give comma-separated numbers, e.g. 0.5,0.5")
    return values


@click.command("eval", cls=CertifyCommand)
@click.argument("model_path", metavar="MODEL", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--dataset",
    help=f"{_DATASETS}, or a .pt or .npz file of images and labels (default: from the checkpoint).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Folder with the data set. [default: $CERTIFY_DATA, else ./data]",
)
@click.option(
    "--eps",
    help="L_inf radius in [0,1] pixel space, e.g. 8/255 or 0.0314; a comma-separated list "
    "(1/255,2/255,4/255) evaluates each, sharing what one radius proves with the others.",
)
@click.option("--arch", help="Architecture of a foreign checkpoint (see `certify models`).")
@click.option("--num-classes", type=int, help="Classes of a foreign checkpoint.")
@click.option(
    "--model-def",
    metavar="FILE.py:FACTORY",
    help="Build the network with your own code (FILE.py:FACTORY or module:factory; this "
    "runs that code), then load the checkpoint into it.",
)
@click.option("--model-args", metavar="JSON", help="Keyword arguments of the --model-def factory.")
@click.option("--mean", callback=_floats, help="Per-channel mean, for ONNX models " + _OUTSIDE)
@click.option("--std", callback=_floats, help="Per-channel std, for ONNX models " + _OUTSIDE)
@click.option(
    "--methods",
    default=",".join(m.value for m in _DEFAULT.methods),
    show_default=True,
    help=_METHODS_HELP,
)
@click.option(
    "--every-method",
    is_flag=True,
    help="Run each method and PGD on every image (default: a cascade that decides "
    "each image with the cheapest stage that can).",
)
@click.option(
    "--check-all",
    is_flag=True,
    help="In the cascade, attack every verified image as a check of the bounds "
    "(default: a sample costing about 10% of the run).",
)
@click.option(
    "--pgd-steps", default=DEFAULT_PGD[EvalMode.CASCADE].steps, show_default=True, type=int
)
@click.option(
    "--pgd-restarts",
    type=int,
    help="Random starts per loss. [default: 2 in the cascade, 1 with --every-method]",
)
@click.option(
    "--pgd-loss",
    type=click.Choice(["margin", "ce", "both"]),
    help="What PGD ascends. [default: both in the cascade, margin with --every-method]",
)
@click.option(
    "--alpha-iterations",
    default=AlphaCrownOptions.iterations,
    show_default=True,
    type=int,
    help="Optimization steps of alpha-CROWN.",
)
@click.option(
    "--alpha-lr",
    default=AlphaCrownOptions.lr,
    show_default=True,
    type=float,
    help="Learning rate of alpha-CROWN's slopes.",
)
@click.option(
    "--timeout",
    default=BabLimits.timeout,
    show_default=True,
    type=float,
    help="bab: seconds per image before it is left open.",
)
@click.option(
    "--max-domains",
    default=BabLimits.max_domains,
    show_default=True,
    type=int,
    help="bab: subdomains per image before it is left open (the same verdicts on any machine).",
)
@click.option(
    "--branching",
    default=BabOptions.branching.value,
    show_default=True,
    type=click.Choice([b.value for b in Branching]),
    help="bab: which ReLU a subdomain splits on.",
)
@click.option(
    "--bab-batch",
    type=int,
    help="bab: subdomains bounded at once. [default: what fits in memory, at most 256]",
)
@click.option(
    "--counterexamples",
    type=click.Path(file_okay=False),
    help="bab: write each confirmed counterexample to this folder as <index>.pt.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Take the images a killed run with the same command decided from its journal "
    "(beside --out or --per-sample) and evaluate the rest.",
)
@click.option(
    "--radius",
    is_flag=True,
    help="Also find each image's certified radius per bound method (bab aside): the "
    "largest eps up to --eps it verifies, by bisection; in the per-image file.",
)
@click.option(
    "--radius-tol",
    "radius_tolerance",
    type=float,
    help=f"Tolerance of the --radius bisection, in pixel space. [default: "
    f"{DEFAULT_RADIUS_TOLERANCE}]",
)
@click.option("--num-samples", type=int, help="Evaluate this many images (default: all).")
@click.option(
    "--start",
    "--first-index",
    "start",
    default=_DEFAULT.start,
    show_default=True,
    type=int,
    help="Index of the first image (--first-index under torchrun, which claims --start).",
)
@click.option("--batch-size", default=_DEFAULT.batch_size, show_default=True, type=int)
@click.option(
    "--crown-batch-size",
    type=int,
    help="Images per CROWN and alpha-CROWN chunk. [default: what fits in memory, at most 32]",
)
@click.option("--device", default="auto", show_default=True, help=f"{_DEVICES}, or cuda:N.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for torch (default: torch's choice).",
)
@click.option("--out", type=click.Path(dir_okay=False), help="Append summary rows to this CSV.")
@click.option("--per-sample", type=click.Path(dir_okay=False), help="Write one row per image.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--seed", default=_DEFAULT.seed, show_default=True, type=int, help="Seed of the PGD starts."
)
def eval_command(
    model_path: str | None,
    dataset: str | None,
    data_dir: str | None,
    eps: str | None,
    device: str,
    threads: int | None,
    out: str | None,
    per_sample: str | None,
    as_json: bool,
    counterexamples: str | None,
    resume: bool,
    **options,
) -> None:
    """Evaluate MODEL (a checkpoint or .onnx file; default: the bundled MNIST model)."""
    import torch

    from certify.pipeline.embedded import EMBEDDED_MODEL
    from certify.pipeline.evaluate import evaluate
    from certify.pipeline.journal import journal_path
    from model_zoo import ModelDefinition, ModelFile
    from reports.eval_csv import check_result_files

    if threads is not None:
        torch.set_num_threads(threads)
    model_def, model_args = options.pop("model_def"), options.pop("model_args")
    if model_args is not None and model_def is None:
        raise UsageError("goes with `model_def`: give the factory too", param="model_args")
    model = ModelFile(
        Path(model_path) if model_path else EMBEDDED_MODEL,
        arch=options.pop("arch"), num_classes=options.pop("num_classes"),
        mean=options.pop("mean"), std=options.pop("std"),
        definition=ModelDefinition.parse(model_def, model_args) if model_def else None,
    )  # fmt: skip
    radius, tolerance = options.pop("radius"), options.pop("radius_tolerance")
    if tolerance is not None and not radius:
        raise UsageError("goes with `radius`: add it", param="radius_tolerance")
    if radius:
        tolerance = DEFAULT_RADIUS_TOLERANCE if tolerance is None else tolerance
    config = config_from_flat(**options, radius_tolerance=tolerance)
    radii = [e.strip() for e in eps.split(",") if e.strip()] if eps else []
    if len(radii) > 1:
        if resume:
            raise UsageError("cannot resume an eps sweep: give one eps", param="resume")
        _sweep(model, dataset, radii, config, data_dir, device, out, per_sample, as_json,
               counterexamples)  # fmt: skip
        return

    out_path = Path(out) if out else None
    per_sample_path = Path(per_sample) if per_sample else None
    check_result_files(out_path, per_sample_path)
    beside = out_path or per_sample_path
    if resume and beside is None:
        raise click.UsageError("--resume needs --out or --per-sample: its journal lies beside them")
    journal = journal_path(beside) if beside is not None else None
    try:
        with _progress_bar() as progress:
            result = evaluate(
                model, dataset, eps, config, data_dir=data_dir, device=device,
                progress=progress, journal=journal, resume=resume,
            )  # fmt: skip
    except SoundnessError as exc:
        folder = out_path.parent if out_path else Path()
        write_soundness_evidence(exc, per_sample_path, folder)
        raise
    if result is None:  # a worker process of a torchrun evaluation: rank 0 reports
        return
    written = result.write_csv(out=out_path, per_sample=per_sample_path)
    if counterexamples:
        written += result.write_counterexamples(counterexamples)
    if journal is not None:
        # Everything it held is in the outputs now.
        journal.unlink(missing_ok=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        Console().print(result.table())
    for path in written:
        click.echo(f"wrote {path}", err=True)


def _sweep(
    model, dataset, radii, config, data_dir, device, out, per_sample, as_json, counterexamples
) -> None:
    """``certify eval --eps a,b,...``: one table, one set of results rows and one
    per-image file per eps (its eps in the file's name)."""
    from certify.pipeline.sweep import evaluate_sweep, per_eps_path
    from reports.eval_csv import check_result_files

    out_path = Path(out) if out else None
    per_sample_path = Path(per_sample) if per_sample else None
    check_result_files(out_path, per_sample_path)
    try:
        with _progress_bar() as progress:
            results = evaluate_sweep(
                model, dataset, radii, config, data_dir=data_dir, device=device,
                progress=progress,
            )  # fmt: skip
    except SoundnessError as exc:
        eps_text = exc.result.settings.columns()["eps"] if exc.result else ""
        path = per_eps_path(per_sample_path, eps_text) if per_sample_path else None
        write_soundness_evidence(exc, path, out_path.parent if out_path else Path())
        raise
    written: list[Path] = []
    for result in results:
        eps_text = result.settings.columns()["eps"]
        samples = per_eps_path(per_sample_path, eps_text) if per_sample_path else None
        written += result.write_csv(out=out_path, per_sample=samples)
        if counterexamples:
            folder = per_eps_path(Path(counterexamples), eps_text)
            written += result.write_counterexamples(folder)
    if as_json:
        click.echo(json.dumps([result.to_json() for result in results], indent=2))
    else:
        console = Console()
        for result in results:
            console.print(result.table())
    for path in dict.fromkeys(written):
        click.echo(f"wrote {path}", err=True)


@contextlib.contextmanager
def _progress_bar() -> Iterator[ProgressFn]:
    """A rich progress bar on stderr with one line per stage."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.advance(tasks[stage], done)

        yield update
