"""`certify eval` end to end through click's test runner, on real MNIST images."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from certify.cli import cli
from certify.data import load_split
from model_zoo import create_model
from model_zoo.checkpoint import save_checkpoint

FAST = ["--pgd-steps", "10", "--methods", "ibp,crown-ibp"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, shared_data):
    """A cnn_4layer trained briefly (clean training) on real MNIST, in certify's format."""
    torch.manual_seed(0)
    data = load_split("mnist", shared_data, "train", num_samples=2000)
    model = create_model("cnn_4layer", in_ch=1, in_dim=28, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _epoch in range(2):
        for i in range(0, len(data.labels), 50):
            loss = torch.nn.functional.cross_entropy(
                model(data.images[i : i + 50]), data.labels[i : i + 50]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    save_checkpoint(path, model.eval(), {"arch": "cnn_4layer", "dataset": "mnist", "eps": 0.002})
    return path


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_eval_writes_consistent_csv_and_json(trained_checkpoint, shared_data, tmp_path) -> None:
    out, per_sample = tmp_path / "results.csv", tmp_path / "samples.csv"
    common = [str(trained_checkpoint), "--data-dir", str(shared_data), "--num-samples", "64"]
    result = _run("eval", *common, *FAST, "--out", str(out), "--per-sample", str(per_sample))
    assert result.exit_code == 0, result.output
    assert "verified (crown-ibp)" in result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["method"] for r in rows] == ["ibp", "crown-ibp"]
    for r in rows:
        assert r["dataset"] == "mnist" and r["eps"] == "0.002" and r["num_samples"] == "64"
        assert float(r["clean_error"]) <= float(r["pgd_error"]) <= float(r["verified_error"])
    assert float(rows[0]["clean_error"]) < 0.3  # the model learned something
    assert float(rows[1]["verified_error"]) < 1.0  # and some samples are verified
    samples = list(csv.DictReader(per_sample.open()))
    assert [int(s["index"]) for s in samples] == list(range(64))
    verified = sum(int(s["verified_any"]) for s in samples)
    best = min(float(r["verified_error"]) for r in rows)
    assert verified >= round((1 - best) * 64)

    result = _run("eval", *common, *FAST, "--json", "--out", str(out))
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["verified_error"]["ibp"] == pytest.approx(float(rows[0]["verified_error"]))
    # The counts of the per-image file, and the errors they give.
    assert payload["clean_wrong"] == sum(s["clean_correct"] == "0" for s in samples)
    assert payload["pgd_attacked"] == sum(s["pgd_robust"] == "0" for s in samples)
    assert payload["best_verified"] == verified
    assert payload["clean_error"] == payload["clean_wrong"] / 64
    assert len(list(csv.DictReader(out.open()))) == 4  # appended, not overwritten


def test_eval_honours_start_and_eps(trained_checkpoint, shared_data) -> None:
    args = [str(trained_checkpoint), "--data-dir", str(shared_data), "--start", "9990"]
    payload = json.loads(_run("eval", *args, *FAST, "--eps", "0", "--json").stdout)
    assert payload["num_samples"] == 10 and payload["start"] == 9990
    # At eps 0 every correctly classified sample is verified by every method.
    assert payload["verified_error"]["ibp"] == pytest.approx(payload["clean_error"])


def test_eval_seed_format_checkpoint(trained_checkpoint, shared_data, tmp_path) -> None:
    state = torch.load(trained_checkpoint, weights_only=True)["state_dict"]
    seed = tmp_path / "seed.pth"
    torch.save({"state_dict": state, "optimizer": {}, "epoch": 1, "best": 0.0}, seed)
    args = ["eval", str(seed), "--dataset", "mnist", "--data-dir", str(shared_data)]
    result = _run(*args, "--num-samples", "8", "--eps", "0.002", "--arch", "cnn_4layer", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["arch"] == "cnn_4layer"
    missing_arch = _run(*args, "--num-samples", "8", "--eps", "0.002")
    assert missing_arch.exit_code != 0 and "--arch" in missing_arch.output


def test_eval_onnx_matches_the_checkpoint(trained_checkpoint, shared_data, tmp_path) -> None:
    from model_zoo.checkpoint import load_checkpoint

    model = load_checkpoint(trained_checkpoint).model
    onnx_path = tmp_path / "small.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), onnx_path, dynamo=False)
    common = ["--data-dir", str(shared_data), "--num-samples", "32", "--eps", "0.002", "--json"]
    from_onnx = _run("eval", str(onnx_path), "--dataset", "mnist", *common, *FAST)
    assert from_onnx.exit_code == 0, from_onnx.output
    from_ckpt = _run("eval", str(trained_checkpoint), *common, *FAST)
    a, b = json.loads(from_onnx.stdout), json.loads(from_ckpt.stdout)
    assert a["arch"] == "onnx"
    for key in ("clean_error", "pgd_error", "verified_error"):
        assert a[key] == b[key], key
    no_dataset = _run("eval", str(onnx_path), *common)
    assert no_dataset.exit_code != 0 and "--dataset" in no_dataset.output


@pytest.mark.slow
def test_counts_give_the_errors_exactly_and_shards_add_up_to_the_whole(tmp_path) -> None:
    """200 bundled images at once and as two shards of 100: the rows' counts give their
    errors exactly, and `certify report` of the shards gives the numbers of the whole."""
    whole, shards = tmp_path / "whole.csv", tmp_path / "shards.csv"
    methods = ["--methods", "ibp,crown-ibp"]
    assert _run("eval", "--num-samples", "200", *methods, "--out", str(whole)).exit_code == 0
    for start in ("0", "100"):
        args = ["--start", start, "--num-samples", "100", *methods, "--out", str(shards)]
        assert _run("eval", *args).exit_code == 0
    rows = list(csv.DictReader(whole.open()))
    for r in rows:
        n = int(r["num_samples"])
        assert n == 200
        assert float(r["clean_error"]) == int(r["clean_wrong"]) / n
        assert float(r["pgd_error"]) == int(r["pgd_attacked"]) / n
        assert float(r["verified_error"]) == (n - int(r["verified"])) / n
    tables = []
    for path in (whole, shards):
        result = _run("report", str(path), "--format", "csv")
        assert result.exit_code == 0, result.output
        tables.append(result.output)
    assert tables[0] == tables[1]
    assert "200" in tables[1].splitlines()[1]


def test_a_soundness_failure_exits_3_and_writes_the_per_image_file(monkeypatch, tmp_path) -> None:
    """Bounds that verify every image, attacked ones included, must stop the run as a bug."""
    from certify.evaluation import images

    def unsound(self, which, method):
        return torch.ones(len(which))

    monkeypatch.setattr(images._ImageRun, "_bound", unsound)
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--num-samples", "20", "--methods", "ibp", "--check-all", "--pgd-steps", "5"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "is verified by ibp but PGD attacked it" in message and "bug" in message
    written = tmp_path / "soundness_failure_samples.csv"
    assert str(written.name) in message
    samples = list(csv.DictReader(written.open()))
    assert len(samples) == 20
    attacked = [s for s in samples if s["verified_ibp"] == "1" and s["pgd_robust"] == "0"]
    assert attacked and all(s["index"] in message for s in attacked[:1])
    # The user's own file is used when given.
    own = tmp_path / "mine.csv"
    result = CliRunner().invoke(cli, [*args, "--per-sample", str(own)])
    assert result.exit_code == 3 and own.exists() and str(own) in result.output


def test_the_default_data_folder_is_certify_data_else_data(
    trained_checkpoint, shared_data, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CERTIFY_DATA", raising=False)
    args = ["eval", str(trained_checkpoint), "--num-samples", "8", *FAST, "--json"]
    missing = CliRunner().invoke(cli, args)
    assert missing.exit_code == 1
    assert "data does not exist" in missing.output and "certify data download" in missing.output
    (tmp_path / "data").symlink_to(shared_data)
    assert json.loads(_run(*args).stdout)["num_samples"] == 8
    (tmp_path / "data").unlink()
    monkeypatch.setenv("CERTIFY_DATA", str(shared_data))
    assert json.loads(_run(*args).stdout)["num_samples"] == 8
