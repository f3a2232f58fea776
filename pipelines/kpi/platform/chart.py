"""The umbrella chart as Helm renders it: first-party subcharts plus the real upstream chart archives.

Used by the chart tests, ``benchmarks/footprint.py`` and the local platform, so that all three look at the
very same render. The upstream archives come from ``charts/kpi-platform/charts/`` when ``helm dependency
build`` has run (it downloads them), else from ``../shared/reference/charts/`` (the exact release archives
kept beside the checkout on machines without internet). Rendering needs the ``helm-python-sdk`` package
(the ``dev`` extra): the real Helm engine, not a re-implementation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
CHARTS = ROOT / "charts"
UMBRELLA = CHARTS / "kpi-platform"
FIRST_PARTY = ("postgres", "minio", "mlflow", "dashboard", "jupyterlab", "scoring")
UPSTREAM = ("airflow", "spark-operator")
REFERENCE_CHARTS = ROOT.parent / "shared" / "reference" / "charts"
RELEASE, NAMESPACE = "kpi", "kpi"
# the Kubernetes version whose schemas every object must satisfy (kind node image in kind-config.yaml)
KUBE_VERSION = "1.33.0"


class UpstreamChartsMissing(FileNotFoundError):
    """Neither ``helm dependency build`` nor the reference folder provides an upstream chart archive."""


def environments() -> dict[str, Path]:
    """Every values file at the top level: ``values-<env>.yaml`` -> env name."""
    return {p.name.removeprefix("values-").removesuffix(".yaml"): p for p in sorted(ROOT.glob("values-*.yaml"))}


def locked_upstream() -> dict[str, str]:
    """Upstream chart name -> version pinned in Chart.lock."""
    lock = yaml.safe_load((UMBRELLA / "Chart.lock").read_text())
    return {d["name"]: d["version"] for d in lock["dependencies"] if d["name"] in UPSTREAM}


def _archive_version(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/Chart.yaml"))
        return str(yaml.safe_load(tar.extractfile(member).read())["version"])


def upstream_archives() -> dict[str, Path]:
    """Upstream chart name -> its release archive, at exactly the locked version.

    Raises:
        UpstreamChartsMissing: an archive is in neither place, or not at the locked version.
    """
    found = {}
    for name, version in locked_upstream().items():
        candidates = [UMBRELLA / "charts" / f"{name}-{version}.tgz", REFERENCE_CHARTS / f"{name}-{version}.tgz"]
        archive = next((c for c in candidates if c.exists()), None)
        if archive is None:
            raise UpstreamChartsMissing(
                f"chart archive {name}-{version}.tgz not found in {candidates[0].parent} (run `helm dependency "
                f"build charts/kpi-platform` where there is internet) nor in {candidates[1].parent}")
        if _archive_version(archive) != version:
            raise UpstreamChartsMissing(f"{archive} does not hold {name} {version}")
        found[name] = archive
    return found


def lock_digest(chart_dir: Path = UMBRELLA) -> str:
    """Helm's digest of a Chart.lock: sha256 of Go's JSON of [Chart.yaml dependencies, lock entries]
    (``resolver.HashReq``); `helm dependency build` refuses a lock whose digest differs."""

    def entry(dep: dict) -> dict:
        out = {"name": dep["name"]}
        if dep.get("version"):
            out["version"] = dep["version"]
        out["repository"] = dep.get("repository", "")
        out.update({k: dep[k] for k in ("condition", "tags", "enabled", "import-values", "alias") if dep.get(k)})
        return out

    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    lock = yaml.safe_load((chart_dir / "Chart.lock").read_text())
    data = json.dumps([[entry(d) for d in chart["dependencies"]], [entry(d) for d in lock["dependencies"]]],
                      separators=(",", ":"))
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def assemble(dest: Path, upstream: bool = True) -> Path:
    """Copy the umbrella into ``dest`` with every dependency under charts/ (what `helm dependency build`
    does); returns the umbrella's path. ``upstream=False`` leaves the upstream archives out."""
    import helm_python

    helm_python.disable_logging()
    target = Path(dest) / "kpi-platform"
    shutil.copytree(UMBRELLA, target, symlinks=False, ignore=shutil.ignore_patterns("*.tgz"))
    (target / "charts").mkdir(exist_ok=True)
    for name in FIRST_PARTY:
        shutil.copytree(CHARTS / name, target / "charts" / name, symlinks=False)
    if upstream:
        for archive in upstream_archives().values():
            shutil.copy2(archive, target / "charts" / archive.name)
    return target


def load_values(env: str) -> dict:
    """The values of one environment file (``values-<env>.yaml``), as ``-f`` would pass them."""
    return yaml.safe_load(environments()[env].read_text()) or {}


def render(chart_dir: Path, values: dict, name: str = RELEASE, revision: int = 1) -> dict[str, str]:
    """Template path -> rendered text, with Helm's own engine (`helm template`; revision > 1 is an upgrade)."""
    import helm_python

    chart = helm_python.Chart.load(chart_dir)
    return chart.render(values, name=name, namespace=NAMESPACE, revision=revision,
                        is_install=revision == 1, is_upgrade=revision > 1)


def objects(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object of a render (the NOTES.txt files left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(rendered: dict[str, str]) -> dict[str, str]:
    """Chart path -> the NOTES.txt it printed (the umbrella's and each subchart's)."""
    return {path: text for path, text in rendered.items() if path.endswith("NOTES.txt")}


def pod_specs(obj: dict) -> list[dict]:
    """The pod spec(s) of a workload object (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod)."""
    kind = obj["kind"]
    if kind == "Pod":
        return [obj["spec"]]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [obj["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def containers(spec: dict) -> list[dict]:
    """Init containers and containers of a pod spec."""
    return spec.get("initContainers", []) + spec.get("containers", [])


def named(docs: list[dict], kind: str, name: str) -> dict:
    """The object ``kind``/``name`` of a render (KeyError naming it when absent)."""
    for obj in docs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} is not in the render")


def merged_values(env: str) -> dict:
    """The umbrella's values.yaml overlaid with ``values-<env>.yaml`` (Helm's coalescing of maps)."""

    def merge(base: dict, override: dict) -> dict:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    return merge(yaml.safe_load((UMBRELLA / "values.yaml").read_text()), load_values(env))
