"""Fixtures of the local platform tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_render(tmp_path_factory):
    """The render of values-local.yaml as the local platform uses it (free ports, a scratch state folder)."""
    from kpi.platform.chart import UpstreamChartsMissing
    from kpi.platform.local import _load_render, _ports

    state = tmp_path_factory.mktemp("platform")
    try:
        return _load_render(state, "local", _ports("auto", state))
    except UpstreamChartsMissing as missing:
        pytest.skip(f"the upstream chart archives are not available offline here: {missing}")
