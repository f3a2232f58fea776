"""Helpers of the chart tests: the same render as the local platform and the footprint benchmark
(``kpi.platform.chart``): the umbrella with its first-party subcharts and the real upstream archives."""

from __future__ import annotations

from kpi.platform.chart import (  # noqa: F401 - re-exported for the chart tests
    CHARTS,
    FIRST_PARTY,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    UMBRELLA,
    UPSTREAM,
    assemble,
    containers,
    environments,
    load_values,
    merged_values,
    named,
    notes,
    objects,
    pod_specs,
    render,
)

ENVIRONMENTS = environments()
