"""`certify eval` under torchrun: two CPU processes (gloo) shard the images and rank 0
writes the same per-sample CSV a single process writes."""

from __future__ import annotations

import csv

import pytest

from certify.core.shard import Shard
from certify.pipeline.embedded import EMBEDDED_MODEL
from tests.launch import run_certify


@pytest.mark.parametrize("n", [0, 1, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_item_once_in_order(n: int, world: int) -> None:
    spans = [Shard(rank, world).bounds(n) for rank in range(world)]
    items = [i for lo, hi in spans for i in range(lo, hi)]
    assert items == list(range(n))
    sizes = [hi - lo for lo, hi in spans]
    assert max(sizes) - min(sizes) <= 1


def _eval(tmp_path, name: str, processes: int, shared_data) -> list[dict[str, str]]:
    # torchrun would take --start for its own --start-method: --first-index is its alias.
    args = [str(EMBEDDED_MODEL), "--data-dir", str(shared_data), "--first-index", "100"]
    args += ["--num-samples", "45", "--methods", "ibp,crown-ibp", "--pgd-steps", "10"]
    args += ["--batch-size", "16", "--per-sample", str(tmp_path / f"{name}.csv")]
    args += ["--out", str(tmp_path / f"{name}_summary.csv")]
    run_certify(["eval", *args], processes)
    with open(tmp_path / f"{name}.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tmp_path, shared_data) -> None:
    single = _eval(tmp_path, "single", 1, shared_data)
    sharded = _eval(tmp_path, "sharded", 2, shared_data)
    assert [r["index"] for r in sharded] == [str(i) for i in range(100, 145)]
    for one, two in zip(single, sharded, strict=True):
        for key in one:
            if key == "pgd_run":
                continue  # the self-check's sample of verified images is drawn per process
            if key.startswith("margin_lower") and one[key] and two[key]:
                assert float(one[key]) == pytest.approx(float(two[key]), rel=1e-4, abs=1e-4)
            else:
                assert one[key] == two[key], (key, one["index"])
    with open(tmp_path / "sharded_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["device"] == "cpu x2 processes"
    assert rows[0]["num_samples"] == "45"
