"""Fixtures of the chart tests: the assembled umbrella (real upstream subcharts in place) and its renders,
once per session."""

from __future__ import annotations

import pytest

from .platform import ENVIRONMENTS, assemble, load_values, objects, render


@pytest.fixture(scope="session")
def umbrella(tmp_path_factory):
    """The umbrella chart with every dependency under charts/, as `helm dependency build` leaves it."""
    from kpi.platform.chart import UpstreamChartsMissing

    try:
        return assemble(tmp_path_factory.mktemp("chart"))
    except UpstreamChartsMissing as missing:
        pytest.skip(f"the upstream chart archives are not available offline here: {missing}")


@pytest.fixture(scope="session")
def renders(umbrella) -> dict[str, dict[str, str]]:
    """Environment -> template path -> rendered text (every values-*.yaml at the top level)."""
    return {env: render(umbrella, load_values(env)) for env in ENVIRONMENTS}


@pytest.fixture(scope="session")
def manifests(renders) -> dict[str, list[dict]]:
    """Environment -> every rendered object."""
    return {env: objects(rendered) for env, rendered in renders.items()}
