"""`certify report`: rendering of a known set of rows, filters, grouping, sorting, merging
of several files with the latest row winning, and bad input through the CLI."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from certify.cli import cli
from certify.core.errors import UsageError
from reports.eval_csv import EVAL_COLUMNS
from reports.results_reading import read_results
from reports.results_table import ReportOptions, build_table, make_report
from reports.table_rendering import render, render_latex, render_markdown


def _row(model, dataset, eps, method, clean, pgd, verified, date="2026-01-01 10:00:00", n=100):
    eps_value = {"0.1": 0.1, "0.3": 0.3, "8/255": 8 / 255}[eps]
    values = dict.fromkeys(EVAL_COLUMNS, "")
    values |= {
        "model": model,
        "arch": "cnn_4layer",
        "dataset": dataset,
        "eps": eps,
        "eps_value": eps_value,
        "method": method,
        "num_samples": n,
        "start": 0,
        "clean_error": clean,
        "pgd_error": pgd,
        "verified_error": verified,
        "date": date,
    }
    return values


ROWS = [
    _row("a.pth", "mnist", "0.1", "ibp", 0.02, 0.05, 0.10),
    _row("a.pth", "mnist", "0.1", "crown-ibp", 0.02, 0.05, 0.08),
    _row("b.pth", "mnist", "0.1", "ibp", 0.03, 0.04, 0.09),
    _row("b.pth", "mnist", "0.1", "crown-ibp", 0.03, 0.04, 0.12),
    _row("c.pth", "cifar", "8/255", "ibp", 0.30, 0.50, 0.60),
    _row("c.pth", "cifar", "8/255", "crown-ibp", 0.30, 0.50, 0.65),
    _row("d.pth", "cifar", "8/255", "ibp", 0.35, 0.52, 0.58),
]


def _write(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(EVAL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture()
def results(tmp_path) -> Path:
    return _write(tmp_path / "results.csv", ROWS)


def test_markdown_of_known_rows(results):
    text = render_markdown(make_report([results], ReportOptions()))
    assert text == (
        "| model | data set | eps | samples | clean | PGD | IBP | CROWN-IBP | best method |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|\n"
        "| c.pth | cifar | 8/255 | 100 | **30.00** | **50.00** | 60.00 | 65.00 | 60.00 |\n"
        "| d.pth | cifar | 8/255 | 100 | 35.00 | 52.00 | **58.00** | – | **58.00** |\n"
        "| a.pth | mnist | 0.1 | 100 | **2.00** | 5.00 | 10.00 | **8.00** | **8.00** |\n"
        "| b.pth | mnist | 0.1 | 100 | 3.00 | **4.00** | **9.00** | 12.00 | 9.00 |\n"
        "\n"
        "Errors in percent: clean, PGD, and verified per bound method (in a cascade, by the "
        "methods up to that one together); best method: the lowest verified error of the "
        "methods. Bold: best in its column for that data set and eps.\n"
    )


def test_latex_of_known_rows_grouped(results):
    groups = make_report([results], ReportOptions(group_by=("dataset",), sort_by=("model",)))
    assert render_latex(groups) == (
        "\\begin{tabular}{lllrrrrrr}\n"
        "\\toprule\n"
        "model & data set & eps & samples & clean & PGD & IBP & CROWN-IBP & best method \\\\\n"
        "\\midrule\n"
        "\\multicolumn{9}{l}{\\emph{dataset=cifar}} \\\\\n"
        "c.pth & cifar & 8/255 & 100 & \\textbf{30.00} & \\textbf{50.00} & 60.00 & 65.00 "
        "& 60.00 \\\\\n"
        "d.pth & cifar & 8/255 & 100 & 35.00 & 52.00 & \\textbf{58.00} & -- "
        "& \\textbf{58.00} \\\\\n"
        "\\midrule\n"
        "\\multicolumn{9}{l}{\\emph{dataset=mnist}} \\\\\n"
        "a.pth & mnist & 0.1 & 100 & \\textbf{2.00} & 5.00 & 10.00 & \\textbf{8.00} "
        "& \\textbf{8.00} \\\\\n"
        "b.pth & mnist & 0.1 & 100 & 3.00 & \\textbf{4.00} & \\textbf{9.00} & 12.00 & 9.00 \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
    )


def test_latex_escapes_model_names(tmp_path):
    path = _write(tmp_path / "r.csv", [_row("my_model&1%.pth", "mnist", "0.1", "ibp", 0, 0, 0)])
    text = render(make_report([path], ReportOptions()), "latex")
    assert "my\\_model\\&1\\%.pth" in text


def test_best_method_is_min_over_methods(results):
    table = build_table(read_results([results])).set_index("model")
    assert table.loc["a.pth", "best_method"] == pytest.approx(8.0)
    assert table.loc["b.pth", "best_method"] == pytest.approx(9.0)
    assert table.loc["d.pth", "best_method"] == pytest.approx(58.0)


def test_where_filters(results):
    options = ReportOptions(where=("dataset=cifar", "verified_ibp<59"))
    [(_, table)] = make_report([results], options)
    assert list(table["model"]) == ["d.pth"]
    [(_, table)] = make_report([results], ReportOptions(where=("eps=0.1", "model!=a.pth")))
    assert list(table["model"]) == ["b.pth"]


def test_sort_descending_and_group(results):
    [(_, table)] = make_report([results], ReportOptions(sort_by=("-best_method",)))
    assert list(table["model"]) == ["c.pth", "d.pth", "b.pth", "a.pth"]
    groups = make_report([results], ReportOptions(group_by=("dataset", "eps"), sort_by=("pgd",)))
    assert [label for label, _ in groups] == ["dataset=cifar, eps=8/255", "dataset=mnist, eps=0.1"]
    assert [list(t["model"]) for _, t in groups] == [["c.pth", "d.pth"], ["b.pth", "a.pth"]]


def test_unknown_column_lists_valid_ones(results):
    with pytest.raises(UsageError, match="unknown column nope; valid columns: model, dataset"):
        make_report([results], ReportOptions(sort_by=("nope",)))


def test_merge_latest_row_wins(tmp_path):
    old = _write(
        tmp_path / "old.csv",
        [
            _row("a.pth", "mnist", "0.1", "ibp", 0.02, 0.05, 0.10, date="2026-01-02 10:00:00"),
            _row("x.pth", "mnist", "0.3", "ibp", 0.05, 0.10, 0.20),
        ],
    )
    new = _write(
        tmp_path / "new.csv",
        [
            _row("a.pth", "mnist", "0.1", "ibp", 0.01, 0.04, 0.07, date="2026-01-03 10:00:00"),
            _row("a.pth", "mnist", "0.1", "crown", 0.01, 0.04, 0.06, date="2026-01-03 10:00:00"),
        ],
    )
    for order in ([old, new], [new, old]):
        table = build_table(read_results(order)).set_index("model")
        assert sorted(table.index) == ["a.pth", "x.pth"]
        assert table.loc["a.pth", "verified_ibp"] == pytest.approx(7.0)
        assert table.loc["a.pth", "clean"] == pytest.approx(1.0)
        assert table.loc["a.pth", "best_method"] == pytest.approx(6.0)


def test_training_runs_are_named_by_folder(tmp_path):
    for run in ("fast", "vanilla"):
        (tmp_path / run).mkdir()
        _write(tmp_path / run / "results.csv", [_row("best.pth", "mnist", "0.1", "ibp", 0, 0, 0)])
    paths = [tmp_path / "fast" / "results.csv", tmp_path / "vanilla" / "results.csv"]
    table = build_table(read_results(paths))
    assert sorted(table["model"]) == ["fast/best.pth", "vanilla/best.pth"]


def test_cli_out_must_be_a_file_in_an_existing_folder(results, tmp_path):
    for out, message in ((tmp_path, "is a folder"), (tmp_path / "no" / "t.md", "does not exist")):
        res = CliRunner().invoke(cli, ["report", str(results), "--out", str(out)])
        assert res.exit_code != 0
        assert len(res.output.strip().splitlines()) == 1 and message in res.output


def test_cli_writes_each_format(results, tmp_path):
    runner = CliRunner()
    for fmt in ("terminal", "markdown", "latex", "csv"):
        out = tmp_path / f"table.{fmt}"
        res = runner.invoke(cli, ["report", str(results), "--format", fmt, "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert "d.pth" in out.read_text()
    res = runner.invoke(cli, ["report", str(results), "--format", "csv", "--where", "model=a.pth"])
    assert res.exit_code == 0
    assert res.output.splitlines()[1].startswith("a.pth,mnist,0.1,100,2,5,10,8,8")


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing.csv"], "does not exist"),
        ("", ["f.csv"], "is empty"),
        ("a,b\n1,2\n", ["f.csv"], "lacks the columns model, dataset"),
        (",".join(EVAL_COLUMNS) + "\n", ["f.csv"], "has a header but no rows"),
        ("ROWS", ["f.csv", "--format", "html"], "unknown format 'html'"),
        ("ROWS", ["f.csv", "--where", "nope=1"], "valid columns: model, dataset, eps"),
        ("ROWS", ["f.csv", "--group-by", "dataset,nope"], "--group-by: unknown column nope"),
        ("ROWS", ["f.csv", "--where", "dataset~cifar"], "cannot read --where"),
        ("ROWS", ["f.csv", "--where", "dataset=svhn"], "no rows left"),
        ("ROWS", ["f.csv", "--where", "pgd<lots"], "'lots' is not a number"),
        ("ROWS", ["f.csv", "f.csv", "sub"], "is a folder; give its results CSV"),
        ('a,b\n1,"2\n', ["f.csv"], "cannot read results file"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, setup, args, message):
    source = tmp_path / "f.csv"
    if setup == "ROWS":
        _write(source, ROWS)
    elif setup is not None:
        source.write_text(setup)
    out = tmp_path / "table.md"
    (tmp_path / "sub").mkdir()
    args = [str(tmp_path / a) if a.endswith(".csv") or a == "sub" else a for a in args]
    res = CliRunner().invoke(cli, ["report", *args, "--out", str(out)])
    # A flag's value at fault is a usage error (2); a results file at fault, input (1).
    assert res.exit_code == (2 if any(a.startswith("--") for a in args) else 1)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert message in lines[0]
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".table.md.*"))


def _counted(model, method, start, n, wrong, attacked, verified, date, mode="cascade", run=""):
    """A row as certify writes it: counts, and the errors they give."""
    row = _row(model, "mnist", "0.1", method, wrong / n, attacked / n, 1 - verified / n, date, n)
    return row | {
        "start": start,
        "mode": mode,
        "run": run,
        "clean_wrong": wrong,
        "pgd_attacked": attacked,
        "verified": verified,
    }


def test_report_sums_disjoint_shards_and_recomputes_errors(tmp_path):
    # Two halves of 3 images each: 1 + 0 wrong, 1 + 1 attacked, 1 + 2 verified of 6.
    first = _write(tmp_path / "a.csv", [_counted("m.pth", "ibp", 0, 3, 1, 1, 1, "2026-01-01")])
    second = _write(tmp_path / "b.csv", [_counted("m.pth", "ibp", 3, 3, 0, 1, 2, "2026-01-02")])
    table = build_table(read_results([first, second])).set_index("model")
    assert table.loc["m.pth", "samples"] == 6
    assert table.loc["m.pth", "clean"] == pytest.approx(100 / 6)
    assert table.loc["m.pth", "pgd"] == pytest.approx(100 * 2 / 6)
    assert table.loc["m.pth", "verified_ibp"] == pytest.approx(50.0)


def test_report_lets_a_newer_run_of_overlapping_images_replace_an_older_one(tmp_path):
    rows = [
        _counted("m.pth", "ibp", 0, 4, 2, 2, 0, "2026-01-01"),  # images 0-3, replaced
        _counted("m.pth", "ibp", 2, 4, 1, 1, 3, "2026-01-02"),  # images 2-5
        _counted("m.pth", "ibp", 6, 2, 0, 0, 2, "2026-01-01"),  # images 6-7, a shard
    ]
    table = build_table(read_results([_write(tmp_path / "r.csv", rows)])).set_index("model")
    assert table.loc["m.pth", "samples"] == 6
    assert table.loc["m.pth", "verified_ibp"] == pytest.approx(100 * 1 / 6)


def test_report_shows_the_run_folder_and_the_mode_when_modes_differ(tmp_path):
    rows = [
        _counted("best.pth", "ibp", 0, 4, 0, 1, 2, "2026-01-01", run="runs/fast"),
        _counted("best.pth", "ibp", 0, 4, 0, 1, 3, "2026-01-01", "every-method", "runs/fast"),
    ]
    table = build_table(read_results([_write(tmp_path / "r.csv", rows)]))
    assert list(table["model"]) == ["runs/fast", "runs/fast"]
    assert sorted(zip(table["mode"], table["verified_ibp"], strict=True)) == [
        ("cascade", 50.0),
        ("every-method", 25.0),
    ]
    single = build_table(read_results([_write(tmp_path / "s.csv", rows[:1])]))
    assert "mode" not in single.columns


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"verified": 7}, "verified 7 is not a count of images"),  # more than the 6 images
        ({"clean_wrong": -1}, "clean_wrong -1 is not a count"),
        ({"pgd_attacked": 2.5}, "pgd_attacked 2.5 is not a count"),
        ({"verified_error": 1.5}, "verified_error 1.5 is not in [0, 1]"),
    ],
)
def test_counts_that_cannot_be_are_refused_naming_the_line(tmp_path, change, fragment):
    row = _counted("m.pth", "ibp", 0, 6, 1, 2, 3, "2026-01-01") | change
    with pytest.raises(UsageError, match=r"line 2: " + re.escape(fragment)):
        read_results([_write(tmp_path / "r.csv", [row])])


def test_methods_of_one_row_over_different_images_are_refused(tmp_path):
    # Shard 2 ran IBP only: a CROWN column over half the images of the others would mislead.
    rows = [
        _counted("m.pth", "ibp", 0, 3, 1, 1, 1, "2026-01-01"),
        _counted("m.pth", "crown", 0, 3, 1, 1, 2, "2026-01-01"),
        _counted("m.pth", "ibp", 3, 3, 0, 1, 2, "2026-01-02"),
    ]
    with pytest.raises(UsageError, match=r"different images per method \(crown: 3, ibp: 6"):
        build_table(read_results([_write(tmp_path / "r.csv", rows)]))
