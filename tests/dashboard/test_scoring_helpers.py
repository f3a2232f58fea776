"""The Streamlit-free scoring helpers: form fields, input checks, upload shapes, bad-row split."""

from __future__ import annotations

import pandas as pd
import pytest
from kpi.dashboard.scoring import (
    ID,
    FormField,
    InvalidInput,
    check_value,
    form_fields,
    form_frame,
    split_feature_rows,
    upload_shape,
)

SCHEMA = {
    "pay_count_30d": {"type": "numeric", "min": 0.0, "max": 40.0, "default": 3.0},
    "avg_ticket_120d": {"type": "numeric", "min": 0.018421052631, "max": 900.5, "default": 50.419285714285714},
    "card_type": {"type": "categorical", "categories": ["CLASSIC", "GOLD"], "default": "CLASSIC"},
}


def test_form_fields_follow_the_model_schema():
    fields = form_fields(SCHEMA)
    assert [f.name for f in fields] == list(SCHEMA)
    count, ticket, card = fields
    assert (count.kind, count.minimum, count.maximum, count.default) == ("float", 0.0, 40.0, 3.0)
    assert ticket.default == 50.4193  # rounded for the form, still inside the range
    assert card.kind == "category" and card.categories == ("CLASSIC", "GOLD") and card.default == "CLASSIC"


def test_unsupported_schema_type_is_named():
    with pytest.raises(ValueError, match="unsupported input type 'timestamp'"):
        form_fields({"x": {"type": "timestamp"}})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (41, "pay_count_30d: 41 is above the training range (between 0 and 40)"),
        (-1, "pay_count_30d: -1 is below the training range (between 0 and 40)"),
        ("abc", "pay_count_30d: 'abc' is not a number"),
        ("", "pay_count_30d: a value is required (between 0 and 40)"),
        (float("inf"), "pay_count_30d: inf is not a finite number"),
    ],
)
def test_bad_numeric_values_get_a_message_naming_the_field(value, message):
    spec = form_fields(SCHEMA)[0]
    assert check_value(spec, value) == (None, message)


def test_unknown_category_is_refused_in_the_form_and_none_means_unknown():
    card = form_fields(SCHEMA)[2]
    assert check_value(card, "PLATINUM")[1] == "card_type: 'PLATINUM' is not a known value (one of CLASSIC, GOLD)"
    assert check_value(card, None) == (None, None)


def test_form_frame_collects_every_problem_before_refusing():
    fields = form_fields(SCHEMA)
    with pytest.raises(InvalidInput) as err:
        form_frame(fields, {"pay_count_30d": 99, "avg_ticket_120d": "x", "card_type": "GOLD"})
    assert [p.split(":")[0] for p in err.value.problems] == ["pay_count_30d", "avg_ticket_120d"]
    frame = form_frame(fields, {"pay_count_30d": 2, "avg_ticket_120d": 10.5, "card_type": "GOLD"})
    assert frame.dtypes.astype(str).tolist() == ["float64", "float64", "object"]
    assert frame.iloc[0].tolist() == [2.0, 10.5, "GOLD"]


def test_upload_shape_recognises_source_files_and_names_missing_ones():
    sources = {n: b"" for n in ("PAYMENTS.csv", "ACTIVE_USER.csv", "DEMOGRAFICOS.csv", "DINERO_CUENTA.csv",
                                 "MARKETPLACE_DATA.csv")}
    assert upload_shape(sources) == "sources"
    assert upload_shape({"users.csv": b""}) == "features"
    with pytest.raises(InvalidInput, match="missing DINERO_CUENTA.csv, MARKETPLACE_DATA.csv"):
        upload_shape({n: b"" for n in list(sources)[:3]})
    with pytest.raises(InvalidInput, match="got 2 other files"):
        upload_shape({"a.csv": b"", "b.csv": b""})


def test_split_feature_rows_keeps_blanks_and_out_of_range_but_sets_aside_text_and_missing_ids():
    fields = form_fields(SCHEMA)
    frame = pd.DataFrame({
        ID: ["1", "2", None, "4"],
        "pay_count_30d": ["3", "", "1", "many"],
        "avg_ticket_120d": ["5000", "7", "8", "9"],
        "card_type": ["GOLD", "PLATINUM", None, "GOLD"],
    })
    valid, rejected = split_feature_rows(fields, frame)
    assert valid[ID].tolist() == ["1", "2"]
    assert valid["avg_ticket_120d"].tolist() == [5000.0, 7.0]  # beyond the training max: still scored
    assert pd.isna(valid.loc[1, "pay_count_30d"])  # blank numeric: the model imputes it
    assert rejected.to_dict("records") == [
        {"row": 3, ID: None, "reason": f"{ID}: missing"},
        {"row": 4, ID: "4", "reason": "pay_count_30d: 'many' is not a number"},
    ]


def test_missing_columns_are_listed_with_the_expected_shape():
    with pytest.raises(InvalidInput, match="lacks column\\(s\\) card_type"):
        split_feature_rows(form_fields(SCHEMA), pd.DataFrame({ID: ["1"], "pay_count_30d": [1],
                                                              "avg_ticket_120d": [2]}))


def test_range_text_without_bounds():
    assert FormField("x", "float").range_text == "any number"
