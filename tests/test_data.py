"""Tests of certify.data: the readers of MNIST, CIFAR-10 and TinyImageNet files.

MNIST and CIFAR-10 are read from the real files in ../shared/data (see its README for
what they hold); damaged copies are made in tmp_path. TinyImageNet is not available, so
a small folder of the official layout is written with Pillow.
"""

from __future__ import annotations

import collections
import gzip
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from certify.core.datasets import Dataset
from certify.core.errors import DataError, UsageError
from certify.data import ImageData, load_split

MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_error(*args: object, **kwargs: object) -> str:
    """The message of the DataError that load_split raises; it must be one line."""
    with pytest.raises(DataError) as info:
        load_split(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def mnist_test(shared_data: Path) -> ImageData:
    return load_split("mnist", shared_data, "test")


@pytest.fixture(scope="module")
def cifar_test(shared_data: Path) -> ImageData:
    return load_split("cifar", shared_data, "test")


@pytest.fixture(scope="module")
def cifar_train(shared_data: Path) -> ImageData:
    return load_split("cifar", shared_data, "train")


def copy_mnist(shared_data: Path, dest: Path, decompress: bool) -> Path:
    """Copy the MNIST test files into dest/MNIST/raw, optionally decompressed."""
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        source = shared_data / "MNIST" / "raw" / f"{name}.gz"
        if decompress:
            (raw / name).write_bytes(gzip.decompress(source.read_bytes()))
        else:
            shutil.copyfile(source, raw / f"{name}.gz")
    return raw


def read_pickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def write_batch(path: Path, data: np.ndarray, labels: list[int], protocol: int = 2) -> None:
    """A CIFAR-10 batch with bytes keys, as the official python 2 files have them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=protocol))


# ---------------------------------------------------------------- MNIST, real files


def test_mnist_test_split_is_the_official_one(mnist_test: ImageData, shared_data: Path) -> None:
    assert mnist_test.images.shape == (10_000, 1, 28, 28)
    assert mnist_test.images.dtype == torch.float32
    assert mnist_test.labels.shape == (10_000,) and mnist_test.labels.dtype == torch.int64
    assert mnist_test.labels[0] == 7
    assert sorted(mnist_test.labels.unique().tolist()) == list(range(10))
    assert mnist_test.images.min() == 0.0 and mnist_test.images.max() == 1.0
    assert (mnist_test.dataset, mnist_test.split, mnist_test.start) == (Dataset.MNIST, "test", 0)
    assert len(mnist_test) == 10_000 and mnist_test.stop == 10_000

    raw = shared_data / "MNIST" / "raw"
    pixels = gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    last = torch.tensor(list(pixels[-784:]), dtype=torch.float32).reshape(28, 28) / 255
    assert torch.equal(mnist_test.images[-1, 0], last)
    assert mnist_test.labels.tolist() == list(labels[8:])


def test_mnist_train_split(shared_data: Path) -> None:
    data = load_split("mnist", shared_data, "train")
    assert data.images.shape == (5_000, 1, 28, 28) and data.split == "train"
    assert torch.bincount(data.labels).tolist() == [500] * 10
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0


@pytest.mark.parametrize("start, num_samples", [(0, 1), (1234, 77), (9_990, None), (9_990, 50)])
def test_mnist_slice_equals_slice_of_full_load(
    mnist_test: ImageData, shared_data: Path, start: int, num_samples: int | None
) -> None:
    part = load_split("mnist", shared_data, "test", start=start, num_samples=num_samples)
    stop = 10_000 if num_samples is None else min(start + num_samples, 10_000)
    assert part.start == start and part.stop == stop
    assert torch.equal(part.images, mnist_test.images[start:stop])
    assert torch.equal(part.labels, mnist_test.labels[start:stop])


def test_mnist_plain_and_gzip_files_read_alike(
    mnist_test: ImageData, shared_data: Path, tmp_path: Path
) -> None:
    copy_mnist(shared_data, tmp_path, decompress=True)
    full = load_split("mnist", tmp_path, "test")
    assert torch.equal(full.images, mnist_test.images)
    assert torch.equal(full.labels, mnist_test.labels)
    part = load_split("mnist", tmp_path, "test", start=5_000, num_samples=10)
    assert torch.equal(part.images, mnist_test.images[5_000:5_010])


# ---------------------------------------------------------------- MNIST, errors


def test_mnist_truncated_plain_file(shared_data: Path, tmp_path: Path) -> None:
    raw = copy_mnist(shared_data, tmp_path, decompress=True)
    images = raw / MNIST_FILES[0]
    images.write_bytes(images.read_bytes()[:-1000])
    message = load_error("mnist", tmp_path, "test")
    assert "truncated" in message and "10,000" in message and str(images) in message


def test_mnist_truncated_gzip_file(shared_data: Path, tmp_path: Path) -> None:
    raw = copy_mnist(shared_data, tmp_path, decompress=False)
    images = raw / f"{MNIST_FILES[0]}.gz"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    assert "truncated or corrupt gzip" in load_error("mnist", tmp_path, "test")


def test_mnist_extra_bytes(shared_data: Path, tmp_path: Path) -> None:
    raw = copy_mnist(shared_data, tmp_path, decompress=True)
    labels = raw / MNIST_FILES[1]
    labels.write_bytes(labels.read_bytes() + b"\0\0\0")
    assert "3 bytes after" in load_error("mnist", tmp_path, "test")


def test_mnist_label_and_image_counts_differ(shared_data: Path, tmp_path: Path) -> None:
    raw = copy_mnist(shared_data, tmp_path, decompress=True)
    labels = raw / MNIST_FILES[1]
    content = labels.read_bytes()
    # A well-formed labels file for one image fewer.
    labels.write_bytes(content[:4] + (9_999).to_bytes(4, "big") + content[8:-1])
    message = load_error("mnist", tmp_path, "test")
    assert "10,000 images" in message and "9,999 labels" in message


def test_mnist_wrong_magic(shared_data: Path, tmp_path: Path) -> None:
    raw = copy_mnist(shared_data, tmp_path, decompress=True)
    shutil.copyfile(raw / MNIST_FILES[1], raw / MNIST_FILES[0])  # labels where images belong
    assert "not an MNIST IDX file" in load_error("mnist", tmp_path, "test")


def test_mnist_missing_file_and_folder(shared_data: Path, tmp_path: Path) -> None:
    assert "data_dir must be the folder that holds MNIST/" in load_error("mnist", tmp_path)
    raw = copy_mnist(shared_data, tmp_path, decompress=False)
    (raw / f"{MNIST_FILES[1]}.gz").unlink()
    message = load_error("mnist", tmp_path, "test")
    assert "t10k-labels-idx1-ubyte" in message and "not found" in message
    assert "train-images-idx3-ubyte" in load_error("mnist", tmp_path, "train")
    for path in raw.iterdir():
        path.unlink()
    assert "is empty" in load_error("mnist", tmp_path, "test")


def test_data_dir_is_the_dataset_folder_itself(shared_data: Path) -> None:
    message = load_error("mnist", shared_data / "MNIST")
    assert "looks like the MNIST folder itself" in message


# ---------------------------------------------------------------- CIFAR-10, real files


def test_cifar_test_split(cifar_test: ImageData, shared_data: Path) -> None:
    assert cifar_test.images.shape == (846, 3, 32, 32)
    assert cifar_test.images.dtype == torch.float32 and cifar_test.labels.dtype == torch.int64
    assert cifar_test.images.min() >= 0.0 and cifar_test.images.max() <= 1.0
    assert set(cifar_test.labels.tolist()) <= set(range(10))
    assert (cifar_test.dataset, cifar_test.split) == (Dataset.CIFAR, "test")

    raw = read_pickle(shared_data / "cifar-10-batches-py" / "test_batch")
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    # The rows hold the red plane, then green, then blue, each 32 x 32 row-major.
    first = torch.from_numpy(raw["data"][0].reshape(3, 32, 32).astype(np.float32)) / 255
    assert torch.equal(cifar_test.images[0], first)
    assert cifar_test.labels.tolist() == list(raw["labels"])


def test_cifar_train_split(cifar_train: ImageData) -> None:
    assert cifar_train.images.shape == (4_660, 3, 32, 32) and cifar_train.split == "train"
    assert sorted(cifar_train.labels.unique().tolist()) == list(range(10))


@pytest.mark.parametrize("start, num_samples", [(0, 1), (100, 50), (840, None), (840, 100)])
def test_cifar_slice_equals_slice_of_full_load(
    cifar_test: ImageData, shared_data: Path, start: int, num_samples: int | None
) -> None:
    part = load_split("cifar", shared_data, "test", start=start, num_samples=num_samples)
    stop = 846 if num_samples is None else min(start + num_samples, 846)
    assert part.start == start and len(part) == stop - start
    assert torch.equal(part.images, cifar_test.images[start:stop])
    assert torch.equal(part.labels, cifar_test.labels[start:stop])


def test_cifar_train_reads_every_batch_file(
    cifar_train: ImageData, shared_data: Path, tmp_path: Path
) -> None:
    raw = read_pickle(shared_data / "cifar-10-batches-py" / "data_batch_1")
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    folder = tmp_path / "cifar-10-batches-py"
    # Two batches of uneven size, with bytes keys as in the official files, one of
    # them in the newest pickle protocol.
    write_batch(folder / "data_batch_1", raw["data"][:1000], raw["labels"][:1000])
    write_batch(folder / "data_batch_2", raw["data"][1000:], raw["labels"][1000:], protocol=5)
    full = load_split("cifar", tmp_path, "train")
    assert torch.equal(full.images, cifar_train.images)
    assert torch.equal(full.labels, cifar_train.labels)
    across = load_split("cifar", tmp_path, "train", start=990, num_samples=20)
    assert torch.equal(across.images, cifar_train.images[990:1010])

    # Batches past the requested slice are not read.
    (folder / "data_batch_3").write_bytes(b"damaged")
    assert len(load_split("cifar", tmp_path, "train", start=10, num_samples=990)) == 990
    assert "data_batch_3" in load_error("cifar", tmp_path, "train")


# ---------------------------------------------------------------- CIFAR-10, errors


def test_cifar_truncated_batch(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    content = (shared_data / "cifar-10-batches-py" / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(content[: len(content) // 2])
    assert "truncated or corrupt CIFAR-10 batch" in load_error("cifar", tmp_path, "test")


@pytest.mark.parametrize(
    "content, expected",
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "lacks a 'data' or 'labels' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, "N x 3072 uint8"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "label 10, outside 0..9"),
        (collections.OrderedDict(a=1), "refusing to unpickle"),
    ],
)
def test_cifar_batch_with_wrong_content(tmp_path: Path, content: object, expected: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(content))
    assert expected in load_error("cifar", tmp_path, "test")


def test_cifar_missing_folder_and_files(tmp_path: Path) -> None:
    assert "cifar-10-batches-py" in load_error("cifar", tmp_path, "test")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    assert "is empty" in load_error("cifar", tmp_path, "test")
    write_batch(folder / "test_batch", np.zeros((1, 3072), np.uint8), [0])
    assert "no CIFAR-10 train batch" in load_error("cifar", tmp_path, "train")


# ---------------------------------------------------------------- TinyImageNet

# Class ids in wnids.txt order; labels follow the sorted order, as ImageFolder's do.
WNIDS = ("n03000003", "n01000001", "n02000002")
LABEL = {"n01000001": 0, "n02000002": 1, "n03000003": 2}
CHANNEL = {"n01000001": 0, "n02000002": 1, "n03000003": 2}  # the class's bright channel
# val file -> (class, number of the image within its class)
VAL = {
    "val_0.JPEG": ("n03000003", 0),
    "val_1.JPEG": ("n01000001", 0),
    "val_2.JPEG": ("n02000002", 0),
    "val_3.JPEG": ("n01000001", 1),
    "val_4.JPEG": ("n03000003", 1),
    "val_5.JPEG": ("n02000002", 1),
}


def write_jpeg(path: Path, wnid: str, number: int, size: int = 64) -> None:
    """A flat image: the class's channel bright, the others encoding the image number."""
    color = [20 + 40 * number] * 3
    color[CHANNEL[wnid]] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), tuple(color)).save(path, quality=95)


def identify(image: torch.Tensor) -> tuple[int, int]:
    """(class channel, image number) of an image written by write_jpeg."""
    means = image.mean(dim=(1, 2)) * 255
    channel = int(means.argmax())
    other = means[[c for c in range(3) if c != channel]].mean()
    return channel, round((float(other) - 20) / 40)


@pytest.fixture()
def tiny_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        for number in range(2):
            write_jpeg(root / "train" / wnid / "images" / f"{wnid}_{number}.JPEG", wnid, number)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    lines = [f"{name}\t{wnid}\t0\t0\t63\t63" for name, (wnid, _) in VAL.items()]
    (root / "val" / "val_annotations.txt").parent.mkdir()
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    for name, (wnid, number) in VAL.items():
        write_jpeg(root / "val" / "images" / name, wnid, number)
    return tmp_path


def test_tinyimagenet_test_split_labels_and_order(tiny_dir: Path) -> None:
    data = load_split("tinyimagenet", tiny_dir, "test")
    assert data.images.shape == (6, 3, 64, 64) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert (data.dataset, data.split) == (Dataset.TINYIMAGENET, "test")
    # Ordered by label, then file name: val_1, val_3 | val_2, val_5 | val_0, val_4.
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    found = [identify(image) for image in data.images]
    assert found == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_tinyimagenet_train_split(tiny_dir: Path) -> None:
    gray = tiny_dir / "tiny-imagenet-200" / "train" / "n02000002" / "images" / "n02000002_9.JPEG"
    Image.new("L", (64, 64), 128).save(gray)
    data = load_split("tinyimagenet", tiny_dir, "train")
    assert data.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    for index in (0, 1, 2, 3, 5, 6):  # the colored images; 4 is the gray one
        assert identify(data.images[index])[0] == data.labels[index]
    # The grayscale image comes back as three equal channels.
    assert data.images[4].shape == (3, 64, 64)
    assert torch.equal(data.images[4][0], data.images[4][1])
    assert abs(float(data.images[4].mean()) - 128 / 255) < 0.02


def test_tinyimagenet_slice_decodes_only_its_images(tiny_dir: Path) -> None:
    full = load_split("tinyimagenet", tiny_dir, "test")
    part = load_split("tinyimagenet", tiny_dir, "test", start=2, num_samples=3)
    assert part.start == 2 and torch.equal(part.images, full.images[2:5])
    assert torch.equal(part.labels, full.labels[2:5])
    # val_4 is the last image; damage it and read a slice that leaves it out.
    (tiny_dir / "tiny-imagenet-200" / "val" / "images" / "val_4.JPEG").write_bytes(b"junk")
    assert len(load_split("tinyimagenet", tiny_dir, "test", num_samples=5)) == 5
    assert "val_4.JPEG is not a readable image" in load_error("tinyimagenet", tiny_dir, "test")


def test_tinyimagenet_class_folder_layouts_read_alike(tiny_dir: Path, tmp_path: Path) -> None:
    expected = {split: load_split("tinyimagenet", tiny_dir, split) for split in ("train", "test")}
    # The seed's preparation: val/<wnid>/ folders, the top-level .txt files gone, and
    # everything under tinyImageNet/.
    root = tiny_dir / "tiny-imagenet-200"
    for name, (wnid, _) in VAL.items():
        (root / "val" / wnid).mkdir(exist_ok=True)
        (root / "val" / "images" / name).rename(root / "val" / wnid / name)
    (root / "val" / "images").rmdir()
    (root / "wnids.txt").unlink()
    (tiny_dir / "tinyImageNet").mkdir()
    root.rename(tiny_dir / "tinyImageNet" / "tiny-imagenet-200")
    for split, data in expected.items():
        again = load_split("tinyimagenet", tiny_dir, split)
        assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)


def test_tinyimagenet_errors(tiny_dir: Path, tmp_path: Path) -> None:
    root = tiny_dir / "tiny-imagenet-200"
    val = root / "val"
    write_jpeg(val / "images" / "val_0.JPEG", "n03000003", 0, size=32)
    assert "is 32x32, not 64x64" in load_error("tinyimagenet", tiny_dir, "test", num_samples=6)
    (val / "images" / "val_0.JPEG").unlink()
    assert "val_0.JPEG not found" in load_error("tinyimagenet", tiny_dir, "test")

    annotations = (val / "val_annotations.txt").read_text()
    (val / "val_annotations.txt").write_text(annotations + "val_9.JPEG\tn09999999\n")
    assert "line 7" in load_error("tinyimagenet", tiny_dir, "test")
    (val / "val_annotations.txt").unlink()
    assert "val_annotations.txt not found" in load_error("tinyimagenet", tiny_dir, "test")
    (val / "val_annotations.txt").write_text("")
    assert "holds no images" in load_error("tinyimagenet", tiny_dir, "test")

    shutil.rmtree(root / "train" / "n01000001" / "images")
    assert "n01000001 holds no images" in load_error("tinyimagenet", tiny_dir, "train")
    shutil.rmtree(root / "train")
    assert "train folder" in load_error("tinyimagenet", tiny_dir, "train")
    (root / "wnids.txt").write_text("")
    assert "wnids.txt is empty" in load_error("tinyimagenet", tiny_dir, "train")
    shutil.rmtree(root)
    assert "tiny-imagenet-200" in load_error("tinyimagenet", tiny_dir, "test")


def test_tinyimagenet_without_pillow(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes "from PIL import Image" fail
    assert "needs Pillow" in load_error("tinyimagenet", tiny_dir, "test")


# ---------------------------------------------------------------- arguments


def test_argument_errors(shared_data: Path, tmp_path: Path) -> None:
    assert "does not exist" in load_error("mnist", tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    assert "is a file" in load_error("mnist", tmp_path / "file")
    assert "unknown data set" in load_error("svhn", shared_data)
    assert "unknown split 'val'" in load_error("mnist", shared_data, "val")
    assert "num_samples must be a positive" in load_error("mnist", shared_data, num_samples=0)
    assert "num_samples must be a positive" in load_error("cifar", shared_data, num_samples=-3)
    assert "start must be an integer >= 0" in load_error("mnist", shared_data, start=-1)
    assert "start must be an integer >= 0" in load_error("mnist", shared_data, start=1.5)
    # A start past the end is the argument's fault, whatever the files hold.
    with pytest.raises(UsageError, match="beyond the end.*10,000 images") as info:
        load_split("mnist", shared_data, "test", start=10_000)
    assert info.value.param == "start"
    with pytest.raises(UsageError, match="846 images"):
        load_split("cifar", shared_data, "test", start=900)


def test_aliases_and_case(shared_data: Path, cifar_test: ImageData) -> None:
    data = load_split("CIFAR10", str(shared_data), "Test", start=np.int64(5), num_samples=2)
    assert data.dataset is Dataset.CIFAR and data.split == "test"
    assert type(data.start) is int and data.start == 5
    assert torch.equal(data.images, cifar_test.images[5:7])
