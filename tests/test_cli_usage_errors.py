"""click's own usage errors and `certify export`'s bad input: one line, the flag or
argument named, exit 2 for a usage error and 1 for a file at fault, nothing written."""

from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner

from certify.cli import cli
from certify.pipeline.embedded import EMBEDDED_MODEL

USAGE = {
    "unknown command": (["nosuch"], "No such command 'nosuch'"),
    "unknown data subcommand": (["data", "nosuch"], "No such command 'nosuch'"),
    "unknown eval flag": (["eval", "--nope"], "No such option '--nope'"),
    "eval flag not a number": (["eval", "--num-samples", "abc"], "'--num-samples'"),
    "report without files": (["report"], "Missing argument 'RESULTS"),
    "download without data set": (["data", "download"], "Missing argument 'DATASET'"),
    "export opset out of range": (["export", "{model}", "{tmp}/m.onnx", "--opset", "3"], "--opset"),
    "export without .onnx": (["export", "{model}", "{tmp}/m.txt"], "needs the .onnx suffix"),
    "export into a missing folder": (["export", "{model}", "{tmp}/no/m.onnx"], "does not exist"),
}
INPUT = {
    "export of a missing checkpoint": (["export", "{tmp}/nope.pth", "{tmp}/m.onnx"], "nope.pth"),
    "export of a corrupt checkpoint": (["export", "{tmp}/bad.pth", "{tmp}/m.onnx"], "corrupt"),
}


@pytest.mark.parametrize("case", [*USAGE, *INPUT])
def test_bad_arguments_give_one_line(case, tmp_path) -> None:
    (tmp_path / "bad.pth").write_bytes(b"\x00garbage" * 50)
    args, fragment = {**USAGE, **INPUT}[case]
    args = [a.format(model=EMBEDDED_MODEL, tmp=tmp_path) for a in args]
    before = set(tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == (2 if case in USAGE else 1), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert fragment in lines[0]
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_export_refuses_an_opset_it_cannot_write(tmp_path) -> None:
    """The exporter converts down from opset 18 and keeps 18 where it cannot: that file
    must not pass for the opset asked."""
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", str(EMBEDDED_MODEL), str(out), "--opset", "13"])
    assert result.exit_code == 2 and "cannot be exported at opset 13" in result.output
    assert "--opset" in result.output
    assert not out.exists()
    result = CliRunner().invoke(cli, ["export", str(EMBEDDED_MODEL), str(out), "--opset", "17"])
    assert result.exit_code == 0, result.output
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [
        17
    ]
