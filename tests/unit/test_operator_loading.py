from __future__ import annotations

from pathlib import Path

import pytest

from aaflow_stream.errors import OperatorError
from aaflow_stream.operators.base import OperatorContext, build

CTX = OperatorContext("a.0", "a", 0, 1, Path("/tmp"))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_colon", "module:callable"),
        ("not_a_module_xyz:f", "cannot import"),
        ("aaflow_stream.operators.basic:Nope", "has no 'Nope'"),
        ("aaflow_stream.operators.basic:__doc__", "not a callable"),
    ],
)
def test_a_bad_reference_names_the_problem(reference: str, message: str) -> None:
    with pytest.raises(OperatorError, match=message):
        build(reference, CTX, {}, source=False)


def test_unknown_parameters_are_refused_before_the_operator_runs() -> None:
    with pytest.raises(OperatorError, match="does not take"):
        build("aaflow_stream.operators.basic:PassThrough", CTX, {"speed": 3}, source=False)


def test_a_stage_used_as_a_source_is_refused() -> None:
    with pytest.raises(OperatorError, match="batches"):
        build("aaflow_stream.operators.basic:PassThrough", CTX, {}, source=True)
