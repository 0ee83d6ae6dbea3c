"""DatasetSpec validation and the CLI form."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tunetl.data import DataError, DatasetSpec


def test_exactly_one_of_builtin_or_path() -> None:
    with pytest.raises(ValidationError, match="builtin.*path"):
        DatasetSpec()
    with pytest.raises(ValidationError, match="got both"):
        DatasetSpec(builtin="digits", path="/data/x")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_must_be_strictly_between_0_and_1(fraction: float) -> None:
    with pytest.raises(ValidationError, match="val_fraction"):
        DatasetSpec(builtin="digits", val_fraction=fraction)


def test_unknown_field_is_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="val_frac"):
        DatasetSpec(builtin="digits", val_frac=0.2)  # type: ignore[call-arg]


def test_classes_keep_types_and_order_and_reject_duplicates() -> None:
    spec = DatasetSpec(builtin="digits", classes=[9, 5, "cat"])
    assert spec.classes == [9, 5, "cat"]
    with pytest.raises(ValidationError, match="more than once: 5"):
        DatasetSpec(builtin="digits", classes=[5, 6, 5])
    with pytest.raises(ValidationError, match="at least one class"):
        DatasetSpec(builtin="digits", classes=[])


def test_parse_cli_forms(tmp_path) -> None:
    assert DatasetSpec.parse("builtin:digits") == DatasetSpec(builtin="digits")
    assert DatasetSpec.parse("builtin:digits[5,6, 7]").classes == [5, 6, 7]
    assert DatasetSpec.parse(str(tmp_path)).path == str(tmp_path)
    assert DatasetSpec.parse("builtin:mnist5k", val_fraction=0.2).val_fraction == 0.2
    with pytest.raises(DataError, match="builtin:NAME"):
        DatasetSpec.parse("builtin:")


def test_display_names() -> None:
    assert DatasetSpec(builtin="digits").display_name() == "digits"
    assert DatasetSpec(builtin="digits", classes=[5, 6, 7, 8, 9]).display_name() == "digits[5,6,7,8,9]"
    assert DatasetSpec(path="/data/flowers/").display_name() == "flowers"
    subset = DatasetSpec(path="/data/flowers", classes=["rose", "tulip"])
    assert subset.display_name() == "flowers[rose,tulip]"
