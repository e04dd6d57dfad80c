"""One training step of CTRAIN 0.6.1 (the certified-training library this project is
compared with), timed on this machine offline, for the side-by-side figures of
``docs/benchmarks.md`` against ``benchmarks/train_speed.py``.

CTRAIN installs auto_LiRPA from GitHub and imports packages a training step never uses,
so ``pip install ctrain`` does not run offline. This script runs CTRAIN's own wrappers
unchanged from its unpacked wheel, with these shims at run time (printed with the
result), and nothing else:

- auto_LiRPA 0.3, with certify's patches for today's torch and numpy;
- ``auto_LiRPA.operators.relu`` (a module of later auto_LiRPA) pointing to 0.3's
  ``BoundRelu``;
- empty stand-ins for imports only evaluation and hyper-parameter search use
  (scikit-learn, SMAC, ConfigSpace, the bundled abCROWN), where they are not installed;
- the Shi regularizer's lookup of the input node by later auto_LiRPA's name
  (``/input-1``; 0.3 says ``/input.1``), aliased for the length of the call;
- the CPU as the default device of TAPS's pivotal-point search (CTRAIN draws its random
  starts on ``cuda``).

The step timed is the body of CTRAIN's training loop, called through the wrapper's
``train_model`` on 1 + K batches of CIFAR-10 (or noise): clean forward, the method's
loss, the Shi regularizer while eps ramps, backward, gradient clipping, the Adam step.
The first step is a warm-up. ``--phase ramp`` (default for shi, sabr, mtl-ibp) times a
step in the middle of the eps ramp, ``--phase final`` (default for taps, staps) one at
eps_max, where CTRAIN takes the TAPS loss.

    pip download --no-deps ctrain==0.6.1 -d ctrain && unzip -q ctrain/*.whl -d ctrain/src
    python benchmarks/ctrain_speed.py --ctrain-dir ctrain/src --method sabr \
        --batch 64 --steps 4 --eps 8/255 --data-dir ~/data
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import sys
import time
import types
from pathlib import Path

from certify.core.eps import parse_eps
from certify.core.errors import DataError
from certify.data import load_split

SHIMS: list[str] = []  # what install_shims did, printed with the result


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    # A spec without origin: torch._dynamo's find_spec() walk over optional packages
    # (sklearn among them) raises on a module whose __spec__ is None.
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__path__ = []
    module.__ctrain_step_stub__ = True
    sys.modules[name] = module
    return module


def _unavailable(what: str):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{what} is stubbed out by ctrain_speed.py (not available offline)")

    return fail


def _import_or_stub(name: str, attrs: dict, why: str, try_real: bool = True) -> None:
    """Stub ``name`` (and its missing parents) when the real package cannot be imported.
    try_real=False: stub the leaf only, without running the real package's __init__s."""
    if not try_real:
        _stub(name, **attrs)
        SHIMS.append(f"stub {name} ({why})")
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            _stub(parent)
    module = _stub(name, **attrs)
    if len(parts) > 1:
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)
    SHIMS.append(f"stub {name} ({why})")


def install_shims() -> None:
    # 1. auto_LiRPA 0.3 with certify's compat patches (torch 2.x / numpy 2 fixes).
    from certify.bounds.lirpa_compat import applied_patches, load_auto_lirpa

    lirpa = load_auto_lirpa()
    SHIMS.append(f"auto_LiRPA {lirpa.__version__} via certify load_auto_lirpa: {applied_patches()}")

    # 2. CTRAIN's regularisers/shi.py does `from auto_LiRPA.operators.relu import BoundRelu`;
    #    the GitHub auto_LiRPA has operators/relu.py, 0.3 has BoundRelu in operators/activation.py.
    try:
        import auto_LiRPA.operators.relu  # noqa: F401
    except ImportError:
        from auto_LiRPA.operators import BoundRelu

        relu = _stub("auto_LiRPA.operators.relu", BoundRelu=BoundRelu)
        sys.modules["auto_LiRPA.operators"].relu = relu
        SHIMS.append(
            "alias auto_LiRPA.operators.relu.BoundRelu -> auto_LiRPA.operators.activation.BoundRelu"
        )

    # 3. Imports of code that a training step never calls (evaluation, HPO, abCROWN).
    _import_or_stub(
        "sklearn.metrics",
        {"accuracy_score": _unavailable("sklearn.metrics.accuracy_score")},
        "CTRAIN.eval imports accuracy_score; used only in evaluation",
    )
    _import_or_stub(
        "smac",
        {
            "Scenario": _unavailable("smac.Scenario"),
            "HyperparameterOptimizationFacade": _unavailable("smac.HPOFacade"),
        },
        "model_wrapper.py imports it for hpo_smac only",
    )
    _import_or_stub(
        "smac.utils.configspace",
        {"get_config_hash": _unavailable("smac get_config_hash")},
        "wrappers import get_config_hash for _hpo_runner only",
    )
    _import_or_stub(
        "ConfigSpace",
        {
            n: _unavailable(f"ConfigSpace.{n}")
            for n in (
                "Categorical",
                "ConfigurationSpace",
                "EqualsCondition",
                "Float",
                "Integer",
                "Constant",
            )
        },
        "model_wrappers/configs.py (HPO search space) only",
    )
    _import_or_stub("ConfigSpace.types", {"NotSet": object()}, "model_wrappers/configs.py only")
    # CTRAIN.eval -> complete_verification.abCROWN.verify -> the bundled abCROWN, which
    # needs onnx2pytorch, onnxruntime, gurobipy, ...; only complete verification uses it.
    abc = "CTRAIN.verification_systems.abCROWN.complete_verifier"
    _import_or_stub(
        f"{abc}.abcrown",
        {"ABCROWN": _unavailable("abCROWN")},
        "bundled abCROWN (needs onnx2pytorch etc.); complete verification only",
        try_real=False,
    )
    _import_or_stub(
        f"{abc}.read_vnnlib",
        {"read_vnnlib": _unavailable("read_vnnlib")},
        "bundled abCROWN; complete verification only",
        try_real=False,
    )

    # 4. Node names: get_shi_regulariser reads the input node as model._modules['/input-1']
    #    (the GitHub auto_LiRPA's name; 0.3 names it '/input.1', CTRAIN's own comment shows
    #    the old name). Wrap it to alias that key to the input node for the call only, and
    #    put the wrapper where the train loops imported the function by name.
    shi_reg = importlib.import_module("CTRAIN.train.certified.regularisers.shi")
    original = shi_reg.get_shi_regulariser

    def get_shi_regulariser(model, *args, **kwargs):
        modules = model._modules
        added = "/input-1" not in modules
        if added:
            modules["/input-1"] = modules[model.input_name[0]]
        try:
            return original(model, *args, **kwargs)
        finally:
            if added:
                del modules["/input-1"]

    patched = []
    for name in (
        "regularisers.shi",
        "regularisers",
        "shi_ibp",
        "sabr",
        "mtl_ibp",
        "taps",
        "staps",
        "crown_ibp",
    ):
        module = importlib.import_module(f"CTRAIN.train.certified.{name}")
        if getattr(module, "get_shi_regulariser", None) is original:
            module.get_shi_regulariser = get_shi_regulariser
            patched.append(name)
    SHIMS.append(
        "get_shi_regulariser: model._modules['/input-1'] aliased to 0.3's "
        f"input node '/input.1' during the call (patched in {patched})"
    )

    # 5. Device: TAPS's _get_pivotal_points_one_batch(..., device='cuda') is called without
    #    a device, and draws its random start points with torch.rand(device='cuda').
    import CTRAIN.bound.taps as taps_bound

    fn = taps_bound._get_pivotal_points_one_batch
    defaults = list(fn.__defaults__)
    assert defaults[-1] == "cuda", defaults
    defaults[-1] = "cpu"
    fn.__defaults__ = tuple(defaults)
    SHIMS.append("CTRAIN.bound.taps._get_pivotal_points_one_batch default device 'cuda' -> 'cpu'")


class TimedLoader:
    """What CTRAIN's train loops read from a loader (len, iteration, mean/std/min/max,
    normalised), over fixed random CIFAR-shaped batches, normalised like CTRAIN's
    load_cifar10. Stamps the clocks each time the loop asks for the next batch."""

    def __init__(self, batches, mean, std):
        import torch

        self.batches = batches
        self.mean, self.std = mean, std
        self.min = ((torch.zeros(mean.shape) - mean) / std).view(1, *mean.shape, 1, 1)
        self.max = ((torch.ones(mean.shape) - mean) / std).view(1, *mean.shape, 1, 1)
        self.normalised = True
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        if self.wall:  # a later epoch: nothing
            return
        for batch in self.batches:
            self._stamp()
            yield batch
        self._stamp()

    def _stamp(self):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


# Per method: CTRAIN's wrapper class, and its module of CTRAIN.train.certified.
METHODS = {
    "shi": ("ShiIBPModelWrapper", "shi_ibp"),
    "sabr": ("SABRModelWrapper", "sabr"),
    "mtl-ibp": ("MTLIBPModelWrapper", "mtl_ibp"),
    "taps": ("TAPSModelWrapper", "taps"),
    "staps": ("STAPSModelWrapper", "staps"),
}
# CTRAIN has no default split (its TAPS wrappers require one): the head of the last four
# of CNN7's 20 layers, as certify's TAPS and STAPS take at 8/255.
DEFAULT_BLOCKS = {"taps": (16, 4), "staps": (16, 4)}


def scheduled_eps(eps, std, warm_up, ramp_up, num_epochs, batches, start_epoch):
    """The eps (unnormalised) CTRAIN's SmoothedScheduler gives each batch of the epoch."""
    from CTRAIN.train.certified.eps_scheduler import SmoothedScheduler

    s = SmoothedScheduler(
        num_epochs=num_epochs,
        eps=eps,
        mean=None,
        std=std,
        eps_schedule_unit="epoch",
        eps_schedule=(warm_up, ramp_up),
        batches_per_epoch=batches,
        start_epoch=start_epoch,
    )
    out = []
    for _ in range(batches):
        out.append(round(float(s.get_cur_eps(normalise=False)), 6))
        s.batch_step()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ctrain-dir", type=Path, required=True, help="the unpacked CTRAIN 0.6.1 wheel"
    )
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after 1 warm-up step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eps", type=parse_eps, default=2 / 255, help="e.g. 8/255")
    parser.add_argument("--phase", choices=("ramp", "final"), default=None)
    parser.add_argument("--block-sizes", default=None, help="TAPS/STAPS split F,H (sum 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="take the batches from the CIFAR-10 training images in DIR (the folder that "
        "holds cifar-10-batches-py) instead of uniform noise; a step costs the same",
    )
    args = parser.parse_args()
    if not (args.ctrain_dir / "CTRAIN").is_dir():
        parser.error(f"{args.ctrain_dir}: no CTRAIN package there (unpack the wheel)")
    sys.path[:0] = [str(args.ctrain_dir)]

    import torch

    torch.set_num_threads(args.threads)
    install_shims()

    import CTRAIN.model_wrappers as wrappers
    from CTRAIN.model_definitions import CNN7_Shi
    from CTRAIN.train.certified.initialisation import ibp_init_shi

    phase = args.phase or ("final" if args.method in ("taps", "staps") else "ramp")
    torch.manual_seed(args.seed)
    model = CNN7_Shi(in_shape=(3, 32, 32), n_classes=10)

    # Eps schedule: warm_up 1 epoch, ramp 4 epochs (CTRAIN's defaults are 1 and 70; only
    # the position in the schedule matters for the cost of a step). With B = 1 + K batches
    # per epoch, epoch 3 is mid-ramp for any B >= 2 (steps 3B-1 .. 4B-2 of a ramp over
    # B+1 .. 5B), epoch 6 is past it (eps == eps_max for every batch).
    warm_up, ramp_up = 1, 4
    start_epoch = 3 if phase == "ramp" else warm_up + ramp_up + 1
    num_epochs = max(start_epoch + 1, warm_up + ramp_up)
    kwargs = dict(
        model=model,
        input_shape=(3, 32, 32),
        eps=args.eps,
        num_epochs=num_epochs,
        warm_up_epochs=warm_up,
        ramp_up_epochs=ramp_up,
        device=torch.device("cpu"),
    )
    if args.method in DEFAULT_BLOCKS:
        blocks = DEFAULT_BLOCKS[args.method]
        if args.block_sizes:
            blocks = tuple(int(v) for v in args.block_sizes.split(","))
        kwargs["block_sizes"] = blocks
    wrapper_name, train_module = METHODS[args.method]
    wrapper = getattr(wrappers, wrapper_name)(**kwargs)
    # train_model skips CTRAIN's Shi init when start_epoch > 0: apply it as epoch 0 would.
    ibp_init_shi(wrapper.original_model, wrapper.bounded_model)

    mean = torch.tensor([0.4914, 0.4822, 0.4465])  # CTRAIN load_cifar10's normalisation
    std = torch.tensor([0.2023, 0.1994, 0.2010])
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    if args.data_dir:
        needed = (1 + args.steps) * args.batch
        try:
            cifar = load_split("cifar", args.data_dir, "train", num_samples=needed)
        except DataError as error:
            parser.error(str(error))
        if len(cifar) < needed:
            parser.error(f"{args.data_dir}: fewer than {needed} CIFAR-10 training images")
    for i in range(1 + args.steps):
        if args.data_dir:
            x = cifar.images[i * args.batch : (i + 1) * args.batch]
            y = cifar.labels[i * args.batch : (i + 1) * args.batch]
        else:
            x = torch.rand(args.batch, 3, 32, 32, generator=g)
            y = torch.randint(0, 10, (args.batch,), generator=g)
        batches.append((((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)), y))
    loader = TimedLoader(batches, mean, std)

    # Record the timed epoch's mean loss from CTRAIN's own end-of-epoch summary (called
    # after the last timed step, so outside the timed region).
    losses = []
    module = importlib.import_module(f"CTRAIN.train.certified.{train_module}")
    summary = module.log_epoch_summary

    def log_epoch_summary(*a, **k):
        losses.append(k.get("loss"))
        return summary(*a, **k)

    module.log_epoch_summary = log_epoch_summary

    # The loader yields its batches in the first epoch only (TAPSModelWrapper.train_model
    # has no end_epoch), so any later epoch of the loop is empty and not timed.
    wrapper.train_model(loader, start_epoch=start_epoch)
    eps_seen = scheduled_eps(args.eps, std, warm_up, ramp_up, num_epochs, len(loader), start_epoch)

    wall = [b - a for a, b in zip(loader.wall, loader.wall[1:], strict=False)]
    cpu = [b - a for a, b in zip(loader.cpu, loader.cpu[1:], strict=False)]
    assert len(wall) == 1 + args.steps, (len(wall), args.steps)
    timed_wall, timed_cpu = wall[1:], cpu[1:]
    print("shims:")
    for s in SHIMS:
        print("  -", s)
    print(
        f"RESULT method={args.method} phase={phase} batch={args.batch} threads={args.threads} "
        f"steps={args.steps} eps_per_step={eps_seen} (max {args.eps:.6f}) "
        f"warmup_step_s={wall[0]:.3f} "
        f"mean_wall_s_per_step={sum(timed_wall) / len(timed_wall):.4f} "
        f"mean_cpu_s_per_step={sum(timed_cpu) / len(timed_cpu):.4f} "
        f"epoch_mean_loss_incl_warmup={float(losses[0]) if losses else float('nan'):.4g} "
        f"torch={torch.__version__}"
    )


if __name__ == "__main__":
    main()
