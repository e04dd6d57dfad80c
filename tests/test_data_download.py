"""Tests of ``certify data download`` (certify.data.download, fetch, archives).

A small HTTP server on 127.0.0.1, started here, serves archives made here in the real
formats (gzip'd IDX files, a tar.gz of pickled CIFAR batches, a TinyImageNet zip), with
their MD5s passed in as ``sources``. Its handler implements ``Range`` itself and can
ignore it, cut a response short or send it slowly. What a download leaves is checked
with the project's readers (load_split) against the arrays the archives were made of.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from certify.cli import cli
from certify.commands.base import CertifyCommand
from certify.core.datasets import Dataset
from certify.core.errors import DataError, UsageError
from certify.data import default_data_dir, download, load_split
from certify.data.download import WORK_DIR, Source, download_dataset
from certify.data.fetch import fetch
from tests.conftest import REPO_ROOT

# ----------------------------------------------------------------- the test server


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    ignore_range: bool = False
    drop_after: int | None = None  # cut the next body after this many bytes
    delay: float = 0.0  # seconds per KiB sent
    always_partial: bool = False  # answer every request with bytes 1- of the file


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        wanted = self.headers.get("Range")
        state.requests.append((self.path, wanted))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if state.always_partial:
            start = 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 1-{len(body) - 1}/{len(body)}")
        elif match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if state.drop_after is not None:
            payload, state.drop_after = payload[: state.drop_after], None
        try:
            for at in range(0, len(payload), 1024):
                self.wfile.write(payload[at : at + 1024])
                self.wfile.flush()
                if state.delay:
                    time.sleep(state.delay)
        except OSError:
            pass  # the client went away (the kill test)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()  # type: ignore[attr-defined]
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(server, name: str, body: bytes, md5: str | None = None) -> Source:
    """Put ``body`` on the server as /files/<name> and return its Source."""
    server.state.files[f"/files/{name}"] = body
    return Source(name, (f"{server.url}/files/{name}",), md5 or hashlib.md5(body).hexdigest())


def ranges_asked(server, name: str) -> list[str | None]:
    return [r for path, r in server.state.requests if path.endswith(f"/{name}")]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- archives in the real formats

RNG = np.random.default_rng(0)


def idx_file(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


@dataclass
class Mnist:
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (N x 28 x 28, N)
    files: dict[str, bytes]


def make_mnist() -> Mnist:
    arrays, files = {}, {}
    for split, prefix, count in (("train", "train", 6), ("test", "t10k", 4)):
        images = RNG.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, count, dtype=np.uint8)
        arrays[split] = (images, labels)
        files[f"{prefix}-images-idx3-ubyte.gz"] = idx_file(images)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = idx_file(labels)
    return Mnist(arrays, files)


CIFAR_NAME = "cifar-10-python.tar.gz"


def make_cifar() -> tuple[bytes, dict[str, tuple[np.ndarray, list[int]]]]:
    """A cifar-10-python.tar.gz with 2 images in each train batch and 3 in test_batch."""
    batches = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            count = 3 if name == "test_batch" else 2
            data = RNG.integers(0, 256, (count, 3072), dtype=np.uint8)
            labels = [int(v) for v in RNG.integers(0, 10, count)]
            batches[name] = (data, labels)
            content = pickle.dumps(
                {b"batch_label": name.encode(), b"labels": labels, b"data": data}
            )
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue(), batches


def make_cifar100() -> tuple[bytes, dict[str, tuple[np.ndarray, list[int]]]]:
    """A cifar-100-python.tar.gz in torchvision's layout: 4 train and 3 test images, fine
    and coarse labels (the reader takes the fine ones, 0..99)."""
    batches = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, count in (("train", 4), ("test", 3)):
            data = RNG.integers(0, 256, (count, 3072), dtype=np.uint8)
            fine = [int(v) for v in RNG.integers(10, 100, count)]
            batches[name] = (data, fine)
            content = pickle.dumps(
                {b"data": data, b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}
            )
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue(), batches


TINY_NAME = "tiny-imagenet-200.zip"


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    """The image as Pillow decodes it, channels first."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)


def make_tinyimagenet() -> tuple[bytes, dict[str, bytes]]:
    """A zip in the official layout: 2 classes, 3 training and 3 validation images."""
    members = {
        "tiny-imagenet-200/wnids.txt": b"n02\nn01\n",  # not sorted, as in the official file
        "tiny-imagenet-200/words.txt": b"n01\tone\nn02\ttwo\n",
        "tiny-imagenet-200/train/n01/n01_boxes.txt": b"n01_0.JPEG\t0\t0\t63\t63\n",
        "tiny-imagenet-200/train/n01/images/n01_0.JPEG": jpeg(1),
        "tiny-imagenet-200/train/n01/images/n01_1.JPEG": jpeg(2),
        "tiny-imagenet-200/train/n02/images/n02_0.JPEG": jpeg(3),
        "tiny-imagenet-200/val/images/val_0.JPEG": jpeg(4),
        "tiny-imagenet-200/val/images/val_1.JPEG": jpeg(5),
        "tiny-imagenet-200/val/images/val_2.JPEG": jpeg(6),
        "tiny-imagenet-200/val/val_annotations.txt": (
            b"val_0.JPEG\tn02\t0\t0\t63\t63\nval_1.JPEG\tn01\t1\t2\t40\t50\n"
            b"val_2.JPEG\tn02\t3\t3\t30\t30\n"
        ),
        "tiny-imagenet-200/test/images/test_0.JPEG": jpeg(7),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue(), members


def pixels(data) -> np.ndarray:
    """ImageData's float images back to the uint8 values they were read from."""
    return (data.images * 255).round().numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def cifar_archive():
    return make_cifar()


# ---------------------------------------------------------------- good downloads


def test_mnist_download_is_read_back(server, tmp_path: Path) -> None:
    mnist = make_mnist()
    sources = [serve(server, name, body) for name, body in mnist.files.items()]
    result = download_dataset("mnist", tmp_path / "data", sources=sources, timeout=5)

    assert result.downloaded and result.path == tmp_path / "data" / "MNIST" / "raw"
    for split, (images, labels) in mnist.arrays.items():
        data = load_split("mnist", tmp_path / "data", split)
        assert np.array_equal(pixels(data)[:, 0], images)
        assert data.labels.tolist() == labels.tolist()
    # torchvision's raw/ folder: each .gz and its decompressed file; nothing else is left.
    names = sorted(mnist.files) + sorted(n.removesuffix(".gz") for n in mnist.files)
    assert contents(tmp_path / "data") == ["MNIST", "MNIST/raw"] + sorted(
        f"MNIST/raw/{n}" for n in names
    )


def test_cifar100_download_is_checked_and_read_back(server, tmp_path: Path) -> None:
    body, batches = make_cifar100()
    official = download.SOURCES[Dataset.CIFAR100][0]
    assert official.file == "cifar-100-python.tar.gz"
    assert official.md5 == "eb9058c3a382ffc7106e4002c42a8d85"  # torchvision's and the site's
    bad = Source(official.file, (f"{server.url}/files/{official.file}",), official.md5)
    server.state.files[f"/files/{official.file}"] = body
    with pytest.raises(DataError, match="checksum|MD5|md5"):
        download_dataset("cifar100", tmp_path, sources=[bad])
    result = download_dataset("cifar100", tmp_path, sources=[serve(server, official.file, body)])
    assert result.path == tmp_path / "cifar-100-python"
    for split in ("train", "test"):
        data = load_split("cifar100", tmp_path, split)
        images, fine = batches[split]
        assert np.array_equal(pixels(data).reshape(len(fine), -1), images)
        assert data.labels.tolist() == fine


def test_cifar_download_is_read_back(server, tmp_path: Path, cifar_archive) -> None:
    body, batches = cifar_archive
    result = download_dataset("cifar", tmp_path, sources=[serve(server, CIFAR_NAME, body)])

    assert result.path == tmp_path / "cifar-10-batches-py"
    test = load_split("cifar", tmp_path, "test")
    assert np.array_equal(pixels(test).reshape(3, 3072), batches["test_batch"][0])
    assert test.labels.tolist() == batches["test_batch"][1]
    train = load_split("cifar", tmp_path, "train")
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(pixels(train).reshape(10, 3072), expected)
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert not (tmp_path / WORK_DIR).exists()


def test_tinyimagenet_val_images_are_sorted_into_class_folders(server, tmp_path: Path) -> None:
    body, members = make_tinyimagenet()
    download_dataset("tinyimagenet", tmp_path, sources=[serve(server, TINY_NAME, body)])

    root = tmp_path / "tiny-imagenet-200"
    assert contents(root / "val") == [
        "n01",
        "n01/val_1.JPEG",
        "n02",
        "n02/val_0.JPEG",
        "n02/val_2.JPEG",
        "val_annotations.txt",
    ]
    # Labels: positions among the sorted wnids (n01 -> 0, n02 -> 1); order: label, name.
    test = load_split("tinyimagenet", tmp_path, "test")
    assert test.labels.tolist() == [0, 1, 1]
    val = "tiny-imagenet-200/val/images/"
    expected = [decoded(members[val + n]) for n in ("val_1.JPEG", "val_0.JPEG", "val_2.JPEG")]
    assert np.array_equal(pixels(test), np.stack(expected))
    train = load_split("tinyimagenet", tmp_path, "train")
    assert train.labels.tolist() == [0, 0, 1]
    first = members["tiny-imagenet-200/train/n01/images/n01_0.JPEG"]
    assert np.array_equal(pixels(train)[0], decoded(first))


def test_a_dataset_already_there_is_kept_unless_forced(
    server, tmp_path: Path, cifar_archive
) -> None:
    body, batches = cifar_archive
    sources = [serve(server, CIFAR_NAME, body)]
    download_dataset("cifar", tmp_path, sources=sources)
    marker = tmp_path / "cifar-10-batches-py" / "mine.txt"
    marker.write_text("kept")

    again = download_dataset("cifar", tmp_path, sources=sources)
    assert not again.downloaded and marker.exists()
    assert len(server.state.requests) == 1

    download_dataset("cifar", tmp_path, sources=sources, force=True)
    assert not marker.exists()  # replaced by a fresh copy
    assert load_split("cifar", tmp_path, "test").labels.tolist() == batches["test_batch"][1]


def test_default_data_dir(monkeypatch) -> None:
    monkeypatch.delenv("CERTIFY_DATA", raising=False)
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("CERTIFY_DATA", "~/sets")
    assert default_data_dir() == Path.home() / "sets"


# ---------------------------------------------------------------- resuming


def test_a_part_file_is_continued_with_a_range_request(
    server, tmp_path: Path, cifar_archive
) -> None:
    body, batches = cifar_archive
    work = tmp_path / WORK_DIR
    work.mkdir()
    (work / f"{CIFAR_NAME}.part").write_bytes(body[:5000])

    download_dataset("cifar", tmp_path, sources=[serve(server, CIFAR_NAME, body)])
    assert ranges_asked(server, CIFAR_NAME) == ["bytes=5000-"]
    assert load_split("cifar", tmp_path, "test").labels.tolist() == batches["test_batch"][1]
    assert not work.exists()


def test_a_server_that_ignores_range_restarts_the_file(
    server, tmp_path: Path, cifar_archive
) -> None:
    body, batches = cifar_archive
    work = tmp_path / WORK_DIR
    work.mkdir()
    # Not the archive's first bytes: appending the 200 response to them would fail the MD5.
    (work / f"{CIFAR_NAME}.part").write_bytes(b"x" * 5000)
    server.state.ignore_range = True

    download_dataset("cifar", tmp_path, sources=[serve(server, CIFAR_NAME, body)])
    assert ranges_asked(server, CIFAR_NAME) == ["bytes=5000-"]
    assert load_split("cifar", tmp_path, "test").labels.tolist() == batches["test_batch"][1]


def test_a_complete_part_file_is_checked_without_downloading(
    server, tmp_path: Path, cifar_archive
) -> None:
    body, _ = cifar_archive
    work = tmp_path / WORK_DIR
    work.mkdir()
    (work / f"{CIFAR_NAME}.part").write_bytes(body)
    download_dataset("cifar", tmp_path, sources=[serve(server, CIFAR_NAME, body)])
    assert ranges_asked(server, CIFAR_NAME) == [f"bytes={len(body)}-"]  # answered 416
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


def test_a_dropped_connection_fails_in_one_line_and_the_next_run_resumes(
    server, tmp_path: Path, cifar_archive
) -> None:
    body, batches = cifar_archive
    sources = [serve(server, CIFAR_NAME, body)]
    server.state.drop_after = 3000
    with pytest.raises(DataError) as caught:
        download_dataset("cifar", tmp_path, sources=sources)
    message = str(caught.value)
    assert "\n" not in message
    assert f"broke off after 3,000 of {len(body):,} bytes" in message and "again" in message
    assert contents(tmp_path) == [WORK_DIR, f"{WORK_DIR}/{CIFAR_NAME}.part"]
    with pytest.raises(DataError, match="not found"):
        load_split("cifar", tmp_path)

    download_dataset("cifar", tmp_path, sources=sources)
    assert ranges_asked(server, CIFAR_NAME) == [None, "bytes=3000-"]
    assert load_split("cifar", tmp_path, "test").labels.tolist() == batches["test_batch"][1]


_KILLED_RUN = """
import sys
from certify.data.download import Source, download_dataset
name, url, md5, root = sys.argv[1:]
download_dataset("cifar", root, sources=[Source(name, (url,), md5)])
"""


def test_a_killed_download_leaves_no_data_and_a_rerun_completes(
    server, tmp_path: Path, cifar_archive
) -> None:
    body, batches = cifar_archive
    source = serve(server, CIFAR_NAME, body)
    server.state.delay = 0.05  # about 2.5 s for the whole archive
    part = tmp_path / WORK_DIR / f"{CIFAR_NAME}.part"
    args = [source.file, source.urls[0], source.md5, str(tmp_path)]
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, *args], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (part.is_file() and part.stat().st_size >= 4096):
            assert child.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()

    kept = part.stat().st_size
    assert 4096 <= kept < len(body)
    assert contents(tmp_path) == [WORK_DIR, f"{WORK_DIR}/{CIFAR_NAME}.part"]
    with pytest.raises(DataError, match="CIFAR-10 folder not found"):
        load_split("cifar", tmp_path)

    server.state.delay = 0.0
    download_dataset("cifar", tmp_path, sources=[source])
    assert ranges_asked(server, CIFAR_NAME) == [None, f"bytes={kept}-"]
    assert load_split("cifar", tmp_path, "test").labels.tolist() == batches["test_batch"][1]


# ---------------------------------------------------------------- failures


def test_a_checksum_mismatch_is_refused_and_nothing_is_left(
    server, tmp_path: Path, cifar_archive
) -> None:
    body, _ = cifar_archive
    source = serve(server, CIFAR_NAME, body, md5="0" * 32)
    with pytest.raises(DataError) as caught:
        download_dataset("cifar", tmp_path / "data", sources=[source])
    message = str(caught.value)
    assert "\n" not in message
    assert f"has MD5 {hashlib.md5(body).hexdigest()}, not the published {'0' * 32}" in message
    assert not (tmp_path / "data").exists()  # the folder this call made went too


def test_unreachable_hosts_and_http_errors(server, tmp_path: Path) -> None:
    port = closed_port()
    dead = Source(CIFAR_NAME, (f"http://127.0.0.1:{port}/{CIFAR_NAME}",), "0" * 32)
    with pytest.raises(DataError) as caught:
        download_dataset("cifar", tmp_path, sources=[dead], timeout=5)
    message = str(caught.value)
    assert f"cannot reach 127.0.0.1:{port}" in message and "`mirror`" in message
    assert "check the network" in message and "\n" not in message

    missing = Source(CIFAR_NAME, (f"{server.url}/nowhere/{CIFAR_NAME}",), "0" * 32)
    with pytest.raises(DataError, match="answered HTTP 404"):
        download_dataset("cifar", tmp_path, sources=[missing], timeout=5)
    assert contents(tmp_path) == []


def test_the_next_url_is_tried_when_one_fails(server, tmp_path: Path, cifar_archive) -> None:
    body, batches = cifar_archive
    good = serve(server, CIFAR_NAME, body)
    source = Source(CIFAR_NAME, (f"{server.url}/gone/{CIFAR_NAME}", good.urls[0]), good.md5)
    download_dataset("cifar", tmp_path, sources=[source])
    assert [path for path, _ in server.state.requests] == [
        f"/gone/{CIFAR_NAME}",
        f"/files/{CIFAR_NAME}",
    ]
    assert load_split("cifar", tmp_path, "test").labels.tolist() == batches["test_batch"][1]


def evil_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return buffer.getvalue()


def evil_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", b"n01\n")
        zf.writestr("/tmp/evil.txt", b"evil")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("dataset", "name", "make", "member"),
    [
        ("cifar", CIFAR_NAME, evil_tar, "cifar-10-batches-py/../../evil.txt"),
        ("tinyimagenet", TINY_NAME, evil_zip, "/tmp/evil.txt"),
    ],
)
def test_archive_members_outside_the_folder_are_refused(
    server, tmp_path: Path, dataset, name, make, member
) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as caught:
        download_dataset(dataset, data_dir, sources=[serve(server, name, make())])
    assert f"{member!r}, which points outside" in str(caught.value)
    assert not (tmp_path / "evil.txt").exists()
    # The checked archive is kept for another try; nothing is installed.
    assert contents(data_dir) == [WORK_DIR, f"{WORK_DIR}/{name}"]


@pytest.mark.parametrize(
    ("wnids", "annotation"),
    [(b"n01\n", b"val_0.JPEG\tn07\t0\t0\t9\t9"), (b"..\n", b"val_0.JPEG\t..\t0\t0\t9\t9")],
)
def test_val_annotations_naming_no_listed_class_are_refused(
    server, tmp_path: Path, wnids: bytes, annotation: bytes
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", wnids)
        zf.writestr("tiny-imagenet-200/val/images/val_0.JPEG", jpeg(0))
        zf.writestr("tiny-imagenet-200/val/val_annotations.txt", annotation)
    source = serve(server, TINY_NAME, buffer.getvalue())
    with pytest.raises(DataError, match="line 1 .* does not map a file to a class of wnids.txt"):
        download_dataset("tinyimagenet", tmp_path, sources=[source])
    assert contents(tmp_path) == [WORK_DIR, f"{WORK_DIR}/{TINY_NAME}"]


def test_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError) as caught:
        download_dataset("mnist", tmp_path / "file")
    assert caught.value.param == "data_dir"
    with pytest.raises(UsageError) as caught:
        download_dataset("mnist", tmp_path, mirror="ftp://example.org/data")
    assert caught.value.param == "mirror"
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        download_dataset("imagenet", tmp_path)
    with pytest.raises(UsageError):  # a folder still to be made is not made for nothing
        download_dataset("mnist", tmp_path / "new" / "deep", mirror="ftp://example.org/data")
    assert contents(tmp_path) == ["file"]


# ---------------------------------------------------------------- readers point at the command


def test_a_missing_dataset_names_the_download_command(tmp_path: Path) -> None:
    @click.command(cls=CertifyCommand)
    @click.option("--data-dir")
    def probe(data_dir: str) -> None:
        load_split("cifar", data_dir)

    result = CliRunner().invoke(probe, ["--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    # The backquoted command survives the CLI's rewriting of names to flags.
    assert f"run `certify data download cifar --data-dir {tmp_path}`" in result.output
    # The library says what would fetch it, and carries the data set and folder for that.
    with pytest.raises(DataError, match="certify.data.download_dataset fetches it") as caught:
        load_split("mnist", tmp_path / "no")
    assert caught.value.download == ("mnist", tmp_path / "no")


# ---------------------------------------------------------------- the command


@pytest.fixture
def official_cifar(server, monkeypatch, cifar_archive):
    """The table's CIFAR-10 entry pointed at an unreachable host, with the test MD5."""
    body, batches = cifar_archive
    server.state.files[f"/mirror/{CIFAR_NAME}"] = body
    unreachable = (f"http://127.0.0.1:{closed_port()}/{CIFAR_NAME}",)
    entry = (Source(CIFAR_NAME, unreachable, hashlib.md5(body).hexdigest()),)
    monkeypatch.setitem(download.SOURCES, Dataset.CIFAR, entry)
    return batches


def test_cli_downloads_from_a_mirror(server, tmp_path: Path, official_cifar) -> None:
    mirror = f"{server.url}/mirror/"  # the trailing slash is optional
    args = ["data", "download", "cifar", "--data-dir", str(tmp_path), "--mirror", mirror]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # Not a terminal: one line per step instead of a bar.
    assert f"download {CIFAR_NAME} (" in result.output
    assert f"cifar: wrote {tmp_path / 'cifar-10-batches-py'}" in result.output
    assert ranges_asked(server, CIFAR_NAME) == [None]
    test = load_split("cifar", tmp_path, "test")
    assert test.labels.tolist() == official_cifar["test_batch"][1]

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "there already; pass --force" in again.output


def test_cli_progress_bar_on_a_forced_terminal(server, tmp_path: Path, official_cifar) -> None:
    args = ["data", "download", "cifar", "--mirror", f"{server.url}/mirror"]
    result = CliRunner().invoke(cli, args, env={"FORCE_COLOR": "1", "CERTIFY_DATA": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert f"download {CIFAR_NAME}" in result.output and "━" in result.output  # the bar
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()  # $CERTIFY_DATA


def test_cli_errors(server, tmp_path: Path, official_cifar) -> None:
    unknown = CliRunner().invoke(cli, ["data", "download", "svhn", "--data-dir", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown data set 'svhn'" in unknown.output

    server.state.files[f"/other/{CIFAR_NAME}"] = b"not the archive"
    args = ["data", "download", "cifar", "--data-dir", str(tmp_path)]
    bad = CliRunner().invoke(cli, [*args, "--mirror", f"{server.url}/other"])
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "not the published" in lines[-1]
    assert "use --mirror" in lines[-1]  # the library's `mirror` named as the flag

    unreachable = CliRunner().invoke(cli, args)
    assert unreachable.exit_code == 1
    assert (
        "cannot reach 127.0.0.1:" in unreachable.output
        and "Connection refused" in unreachable.output
    )
    assert contents(tmp_path) == []


def test_a_server_that_sends_parts_never_asked_for_is_refused(server, tmp_path: Path) -> None:
    """Bytes 1- for a request of the whole file (and for a resumed one): one line, no loop."""
    body = b"0123456789" * 100
    source = serve(server, "f.bin", body)
    (tmp_path / WORK_DIR).mkdir()
    (tmp_path / WORK_DIR / "f.bin.part").write_bytes(body[:10])
    server.state.always_partial = True
    with pytest.raises(DataError, match="sent part of the file where the whole was asked for"):
        fetch(source.urls, tmp_path / WORK_DIR / "f.bin", source.md5)
    assert [r for _, r in server.state.requests] == ["bytes=10-", None]
