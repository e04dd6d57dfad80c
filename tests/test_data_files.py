"""A test set of the user's own (``--dataset FILE.pt`` or ``FILE.npz``) and CIFAR-100
(torchvision's ``cifar-100-python`` layout), each evaluated end to end; the file's
outcomes checked against the same images read from the built-in MNIST reader, and every
bad file refused in one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import certify
from certify.cli import cli
from certify.data import load_split
from certify.pipeline.embedded import EMBEDDED_DATA

COMMON = ["--eps", "0.3", "--num-samples", "24", "--pgd-steps", "5", "--methods", "ibp,crown"]


def _eval(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["eval", *args])
    return result.exit_code, result.output


def _per_sample(tmp_path: Path, name: str, *args: str) -> pd.DataFrame:
    path = tmp_path / f"{name}.csv"
    code, output = _eval(*args, *COMMON, "--per-sample", str(path))
    assert code == 0, output
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def mnist_slice():
    return load_split("mnist", EMBEDDED_DATA, "test", 0, 30)


def test_a_tensor_file_gives_the_outcomes_of_the_same_images_from_the_mnist_reader(
    mnist_slice, tmp_path: Path
) -> None:
    """The bundled model on 30 MNIST test images, once through the MNIST reader, once
    from a .pt file of float pixels and once from an .npz of uint8 pixels: the pixels
    are the same numbers, so every per-image outcome must be too."""
    pt, npz = tmp_path / "mine.pt", tmp_path / "mine.npz"
    torch.save({"images": mnist_slice.images, "labels": mnist_slice.labels, "num_classes": 10}, pt)
    as_bytes = (mnist_slice.images * 255).round().to(torch.uint8).numpy()
    np.savez(npz, images=as_bytes, labels=mnist_slice.labels.numpy())  # no class count
    reference = _per_sample(tmp_path, "reference", "--dataset", "mnist",
                            "--data-dir", str(EMBEDDED_DATA))  # fmt: skip
    for file in (pt, npz):
        rows = _per_sample(tmp_path, file.stem + file.suffix, "--dataset", str(file))
        pd.testing.assert_frame_equal(rows, reference, check_exact=False, rtol=1e-6)
    result = certify.evaluate(None, npz, 0.3, certify.EvalConfig(methods="ibp", num_samples=5))
    assert result.settings.dataset == "mine.npz" and result.summary.num_samples == 5
    assert list(result.samples["index"]) == [0, 1, 2, 3, 4]


def _bad_files(tmp_path: Path, good: dict) -> dict[str, tuple[Path, str]]:
    """name -> (file, words its one-line error must hold)."""
    cases = {
        "three_dims": ({**good, "images": good["images"][:, 0]}, "N x C x H x W"),
        "label_outside": ({**good, "num_classes": 5}, "the file says 5 classes"),
        "pixels_outside": ({**good, "images": good["images"] * 2 - 0.5}, "outside [0, 1]"),
        "no_labels": ({"images": good["images"]}, "no 'labels'"),
        "label_count": ({**good, "labels": good["labels"][:3]}, "one integer label per image"),
        "float_labels": ({**good, "labels": good["labels"].float()}, "give integers"),
    }
    files = {}
    for name, (content, words) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(content, path)
        files[name] = (path, words)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    files["corrupt"] = (corrupt, "not a readable .npz file")
    files["missing"] = (tmp_path / "nope.pt", "does not exist")
    return files


def test_bad_data_files_get_one_line_each(mnist_slice, tmp_path: Path) -> None:
    good = {"images": mnist_slice.images[:6], "labels": mnist_slice.labels[:6]}
    for name, (path, words) in _bad_files(tmp_path, good).items():
        code, output = _eval("--dataset", str(path), *COMMON)
        lines = output.strip().splitlines()
        assert code in (1, 2) and len(lines) == 1, (name, output)
        assert words in lines[0] and "Traceback" not in output, (name, lines[0])
    # A label past the model's outputs, in a file that does not say its classes.
    path = tmp_path / "eleven.pt"
    torch.save({**good, "labels": torch.full((6,), 11)}, path)
    code, output = _eval("--dataset", str(path), *COMMON)
    assert code == 1 and "gives 10 outputs" in output, output


def _cifar100_folder(root: Path, count: int) -> tuple[np.ndarray, list[int]]:
    """A cifar-100-python/test batch of ``count`` random images with fine labels."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    fine = [int(v) for v in rng.integers(0, 100, count)]
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    with (folder / "test").open("wb") as f:
        pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * count}, f)
    return data, fine


def test_cifar100_evaluates_end_to_end(tmp_path: Path) -> None:
    data, fine = _cifar100_folder(tmp_path / "data", 12)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3072, 32), nn.ReLU(), nn.Linear(32, 100))
    config = certify.EvalConfig(methods="ibp,crown", mode="every-method")
    result = certify.evaluate(network, "cifar100", "1/255", config, data_dir=tmp_path / "data")
    images = torch.from_numpy(data.reshape(12, 3, 32, 32).astype(np.float32) / 255)
    with torch.no_grad():
        expected = network(images).argmax(1).tolist()
    assert result.samples["clean_pred"].tolist() == expected
    assert result.samples["label"].tolist() == fine and result.settings.dataset == "cifar100"
    # Real bounds were computed: finite, and below the margin at the image itself.
    with torch.no_grad():
        logits = network(images)
    true = logits.gather(1, torch.tensor(fine)[:, None])
    others = logits.scatter(1, torch.tensor(fine)[:, None], float("-inf"))
    margin = (true[:, 0] - others.max(1).values).numpy()
    for method in ("ibp", "crown"):
        lower = result.samples[f"margin_lower_{method}"].to_numpy()
        assert np.isfinite(lower).all() and (lower <= margin + 1e-4).all(), method
    # A model with 10 outputs does not fit CIFAR-100: one line, exit 1.
    ten = tmp_path / "ten.onnx"
    torch.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), torch.zeros(1, 3, 32, 32),
                      ten, dynamo=False)  # fmt: skip
    code, output = _eval(str(ten), "--dataset", "cifar100", "--data-dir", str(tmp_path / "data"),
                         "--eps", "1/255")  # fmt: skip
    assert code == 1 and "cifar100 has 100 classes" in output and len(output.splitlines()) == 1


def test_a_missing_cifar100_folder_names_the_download_command(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    network = nn.Sequential(nn.Flatten(), nn.Linear(3072, 100))
    torch.onnx.export(network, torch.zeros(1, 3, 32, 32), tmp_path / "m.onnx", dynamo=False)
    code, output = _eval(str(tmp_path / "m.onnx"), "--dataset", "cifar100", "--data-dir",
                         str(tmp_path / "data"), "--eps", "1/255")  # fmt: skip
    lines = output.strip().splitlines()
    assert code == 1 and len(lines) == 1, output
    assert "cifar-100-python" in lines[0] and "certify data download cifar100" in lines[0]


def test_eval_takes_threads(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        code, output = _eval("--threads", "1", "--num-samples", "4", "--methods", "ibp")
        assert code == 0 and torch.get_num_threads() == 1, output
    finally:
        torch.set_num_threads(threads)  # the setting is the process's
    code, output = _eval("--threads", "0")
    assert code == 2 and "--threads" in output and len(output.strip().splitlines()) == 1
