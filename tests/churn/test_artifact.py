"""The registered model artefact runs no stored code: parameters as JSON, a models-from-code pyfunc with
the scoring module bundled, public pinned requirements, and a loader that reads the JSON alone.

Every test registers a real exported model (the synthetic tree ensemble) in its own sqlite MLflow store.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.timeout(900)]


@pytest.fixture()
def registered(tmp_path, synthetic_fits):
    """``(settings, model, local folder of version 1's artefact)`` in a fresh store."""
    import mlflow
    from kpi.churn.mlflow_utils import client, experiment_id, log_and_register, using_store
    from model_support import store_settings

    settings = store_settings(tmp_path / "store")
    fit = synthetic_fits["gbt"]
    with using_store(settings), mlflow.start_run(experiment_id=experiment_id("artefact-test", settings)):
        version = log_and_register(settings, fit.model, fit.test.head(3), tags={"purpose": "test"})
    uri = client(settings).get_model_version_download_uri(settings.churn_model_name, version.version)
    assert uri.startswith("file://")
    return settings, fit, Path(uri.removeprefix("file://"))


def test_the_artefact_holds_parameters_as_json_and_no_pickle(registered):
    import kpi.churn.model as scoring_module

    _, fit, folder = registered
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "artifacts/churn_model.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    stored = json.loads((folder / "artifacts" / "churn_model.json").read_text())
    assert stored == json.loads(json.dumps(fit.model.to_dict()))
    # the scoring code travels with the model, byte for byte the platform's own module
    assert (folder / "code" / "kpi_churn_model.py").read_bytes() == Path(scoring_module.__file__).read_bytes()
    mlmodel = (folder / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_model.pkl" not in mlmodel


def test_requirements_name_only_pinned_public_packages(registered):
    _, _, folder = registered
    requirements = [r for r in (folder / "requirements.txt").read_text().splitlines() if r.strip()]
    names = {r.split("==")[0].lower() for r in requirements}
    assert names == {"mlflow", "numpy", "pandas", "numba", "llvmlite"}, requirements  # a tree model
    assert all("==" in r for r in requirements)
    assert "kpi" not in (folder / "conda.yaml").read_text() + (folder / "python_env.yaml").read_text()


def test_the_requirements_cover_every_package_the_bundled_code_imports(registered, synthetic_fits):
    # an environment restored from requirements.txt (mlflow models serve) must be able to score trees
    import sys

    from kpi.churn.mlflow_utils import pip_requirements
    from model_support import scoring_module_imports

    _, _, folder = registered
    stored = {r.split("==")[0].lower() for r in (folder / "requirements.txt").read_text().split()}
    assert scoring_module_imports() - set(sys.stdlib_module_names) <= stored
    linear = {r.split("==")[0] for r in pip_requirements(synthetic_fits["logistic_regression"].model)}
    assert linear == {"mlflow", "numpy", "pandas"}  # the regression never imports numba


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_pyfunc_scores_in_an_environment_without_the_kpi_package(registered, tmp_path):
    _, fit, folder = registered
    rows = fit.test.head(20).astype({"visits": "float64"})  # the signature's numerics are doubles
    rows.to_json(tmp_path / "rows.json", orient="records")
    proc = _run_python(f"""
        import importlib.abc, json, sys
        class NoKpi(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "kpi" or name.startswith("kpi."):
                    raise ImportError("kpi is not installed here")
        sys.meta_path.insert(0, NoKpi())
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model({str(folder)!r})
        rows = pd.read_json({str(tmp_path / "rows.json")!r}, orient="records", dtype={{"visits": "float64"}})
        out = model.predict(rows[model.metadata.get_input_schema().input_names()])
        assert not [m for m in sys.modules if m == "kpi" or m.startswith("kpi.")]
        print(json.dumps(out["p_active_60d"].tolist()))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert np.max(np.abs(got - fit.model.predict_proba(rows))) < 1e-12


class _Bomb:
    """A pickle that writes a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pickle ran')",))


def test_loading_a_tampered_artefact_runs_none_of_its_code(registered, tmp_path):
    from kpi.churn.mlflow_utils import load_version_model
    from kpi.churn.registry import evaluate_and_promote, load_champion

    settings, fit, folder = registered
    marker = tmp_path / "executed"
    payload = f"open({str(marker)!r}, 'w').write('stored code ran')\n"
    # an attacker with write access to the artefact store replaces every file that could hold code
    for code_file in (folder / "pyfunc_entry.py", folder / "code" / "kpi_churn_model.py"):
        code_file.write_text(payload + code_file.read_text())
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Bomb(marker)))
    (folder / "code" / "sitecustomize.py").write_text(payload)
    (folder / "code" / "numpy.py").write_text(payload)

    model = load_version_model(settings, 1)
    assert np.array_equal(model.predict_proba(fit.test), fit.model.predict_proba(fit.test))
    assert not marker.exists()
    # the champion path (dashboard, scoring) reads the same JSON
    from kpi.churn.mlflow_utils import client

    client(settings).set_registered_model_alias(settings.churn_model_name, settings.churn_champion_alias, "1")
    champion = load_champion(settings)
    assert champion is not None and champion.model.to_dict() == fit.model.to_dict()
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - no holdout on this run; what matters is what did not run
        evaluate_and_promote(settings, 1)
    assert not marker.exists()

    # control: the tampering is real, MLflow's own loader does execute the stored entry file
    proc = _run_python(f"import mlflow; mlflow.pyfunc.load_model({str(folder)!r})", tmp_path)
    assert marker.exists(), proc.stderr[-2000:]


def test_tampered_parameters_are_refused_with_a_clear_error(registered):
    from kpi.churn.mlflow_utils import load_version_model
    from kpi.churn.model import ModelFormatError

    settings, _, folder = registered
    path = folder / "artifacts" / "churn_model.json"
    data = json.loads(path.read_text())
    data["trees"]["trees"][0]["left"][0] = 0  # the root becomes its own child: a cycle
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match=r"trees\[0\]: node 0 has children"):
        load_version_model(settings, 1)


def test_using_store_restores_the_previous_store_and_environment(tmp_path, monkeypatch):
    import os

    import mlflow
    from kpi.churn.mlflow_utils import using_store
    from model_support import store_settings

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    outer = f"sqlite:///{tmp_path / 'outer.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outer)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", outer)
    first, second = store_settings(tmp_path / "a"), store_settings(tmp_path / "b")
    try:
        # both set explicitly: an earlier test of this process may have set the registry URI already
        mlflow.set_tracking_uri(outer)
        mlflow.set_registry_uri(outer)
        with using_store(first) as uri:
            assert uri == first.resolved_mlflow_uri
            assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == uri
            with using_store(second):
                assert mlflow.get_tracking_uri() == second.resolved_mlflow_uri
            assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == uri
        assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == outer
        assert os.environ["MLFLOW_TRACKING_URI"] == os.environ["MLFLOW_REGISTRY_URI"] == outer
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def test_mlflow_utils_uses_no_private_mlflow_state():
    # issue 12 §6: the store is switched through public setters only (a test of the code's contract)
    import re

    import kpi.churn.mlflow_utils as module

    source = Path(module.__file__).read_text()
    assert not re.findall(r"\._tracking_uri\b|\._registry_uri\b|_tracking_service|_model_registry", source)
