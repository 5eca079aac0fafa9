"""`validate` and `up` check the whole topology before anything starts, every problem at
once: here, source paths that do not exist (no process is started by these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aaflow_stream import cli


def _topology(tmp_path: Path, sources: list[str], extra_stage: str = "") -> Path:
    path = tmp_path / "t.yaml"
    listed = ", ".join(f"'{s}'" for s in sources)
    path.write_text(
        f"name: t\ndata_dir: {tmp_path}/data\nrun_dir: {tmp_path}/run\n"
        f"sources: [{{paths: [{listed}]}}]\n"
        "stages:\n  - {operator: load}\n"
        f"{extra_stage}"
        "  - {operator: embed}\n  - {operator: upsert}\n"
    )
    return path


def test_validate_lists_every_missing_source_path_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "here").mkdir()
    (tmp_path / "here.txt").write_text("a document")
    topology = _topology(
        tmp_path,
        [f"{tmp_path}/here", f"{tmp_path}/gone", f"{tmp_path}/here.txt", f"{tmp_path}/lost.md"],
    )
    assert cli.main(["validate", str(topology)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert f"$.sources[0].paths[1]: '{tmp_path}/gone' does not exist" in err
    assert f"$.sources[0].paths[3]: '{tmp_path}/lost.md' does not exist" in err
    assert "paths[0]" not in err and "paths[2]" not in err


def test_validate_reports_a_missing_source_and_a_bad_operator_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage = "  - {operator: custom, name: c, ref: 'no_such_module_here:Op'}\n"
    topology = _topology(tmp_path, [f"{tmp_path}/gone"], stage)
    assert cli.main(["validate", str(topology)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "$.stages[1].ref" in err and "$.sources[0]" in err


def test_up_with_a_missing_source_exits_2_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = _topology(tmp_path, [f"{tmp_path}/gone"])
    assert cli.main(["up", str(topology), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
