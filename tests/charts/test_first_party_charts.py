"""First-party charts: a values schema that describes every key, and defaults that validate against it."""

from __future__ import annotations

import json

import pytest
import yaml

from .platform import CHARTS, ENVIRONMENTS, FIRST_PARTY

CHART_NAMES = (*FIRST_PARTY, "kpi-platform")


def _undescribed(values: dict, schema: dict, prefix: str = "") -> list[str]:
    missing = []
    properties = schema.get("properties", {})
    for key, value in values.items():
        node = properties.get(key)
        if node is None or not node.get("description"):
            missing.append(prefix + key)
        elif isinstance(value, dict) and "properties" in node:
            missing += _undescribed(value, node, f"{prefix}{key}.")
    return missing


@pytest.mark.parametrize("name", CHART_NAMES)
def test_every_key_of_the_values_is_described_in_the_schema(name):
    schema = json.loads((CHARTS / name / "values.schema.json").read_text())
    values = yaml.safe_load((CHARTS / name / "values.yaml").read_text())
    assert _undescribed(values, schema) == []


@pytest.mark.parametrize("name", CHART_NAMES)
def test_default_values_validate_against_the_schema_with_helm(name):
    import helm_python

    helm_python.disable_logging()
    chart = helm_python.Chart.load(CHARTS / name)
    chart.validate_schema(chart.values)


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_environment_values_of_first_party_charts_validate(env):
    import jsonschema

    values = yaml.safe_load(ENVIRONMENTS[env].read_text())
    for name in FIRST_PARTY:
        schema = json.loads((CHARTS / name / "values.schema.json").read_text())
        defaults = yaml.safe_load((CHARTS / name / "values.yaml").read_text())
        jsonschema.validate({**defaults, **values.get(name, {})}, schema)
    umbrella = json.loads((CHARTS / "kpi-platform" / "values.schema.json").read_text())
    jsonschema.validate({k: v for k, v in values.items()}, umbrella)


def test_a_typo_in_values_is_refused_with_its_name():
    import helm_python

    chart = helm_python.Chart.load(CHARTS / "minio")
    with pytest.raises(helm_python.HelmError, match="bucketz"):
        chart.validate_schema({**chart.values, "bucketz": ["x"]})
