"""The local platform: the platform's own programs as processes on this machine, configured by the chart.

No Docker engine or Kubernetes API server is needed. ``values-local.yaml`` is rendered with the real Helm
engine and the real upstream charts (``kpi.platform.chart``), and each process is started from that render:
its command line (container ``command``/``args``, else the image's ENTRYPOINT/CMD from ``images/``), its
environment (``env`` and ``envFrom`` resolved from the rendered ConfigMaps and Secrets, ``$(VAR)`` expanded
as the kubelet does), and the files its pod mounts (ConfigMap and Secret volumes written out, airflow.cfg
included). Two rewrites bridge a cluster and a machine: every ``<service>:<port>`` becomes a loopback port
(``ports``) and every path of the images becomes a path here (``image_paths``). The only behavioural
differences are the ones a machine forces, listed in ``DIFFERENCES`` and printed by ``kpi platform up``.

State (data of Postgres and the S3 server, logs, PIDs, the Secrets of the first render) lives under
``<KPI_HOME>/platform``; like the chart's ``lookup``, a later ``up`` reuses the Secrets of the first one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64decode
from dataclasses import dataclass, field
from pathlib import Path

from kpi.platform.chart import RELEASE, ROOT, assemble, containers, load_values, named, objects, render

# what differs from the cluster, and why (printed by `kpi platform up`, asserted by the tests)
DIFFERENCES = {
    "executor": "LocalExecutor instead of KubernetesExecutor: no pod can start here, tasks run as processes",
    "spark": "KPI_SPARK_BACKEND=local: spark-submit with a local master instead of a SparkApplication",
    "object storage": "SeaweedFS `weed mini` (S3 API) with the buckets and users the MinIO bootstrap Job creates:"
                      " no MinIO server binary is available from our registries",
    "postgres": "the machine's Postgres server binaries (Debian's 15) instead of the postgres:17.6 image; the"
                " chart's own init script creates the roles and databases",
    "addresses": "every Service address is a port on 127.0.0.1 and servers listen there only, except Airflow's"
                 " log servers (scheduler, triggerer), which Airflow binds to every interface; they serve logs"
                 " only to requests signed with the release's JWT secret",
    "images": "programs run from the project's venv and checkout instead of the images built from them;"
              " the Airflow image's entrypoint (which waits for the database) is replaced by health checks;"
              " as root, JupyterLab gets --allow-root (the image runs it as uid 10001)",
}
# Services of the render the processes answer on; the default local port is the Service's own port
SERVICES = ("postgres", "minio", "mlflow", "api-server", "dashboard", "triggerer", "jupyterlab", "scoring")
# where the images put what they carry (images/*/Dockerfile), as paths of this checkout
IMAGE_LAYOUT = {"/opt/airflow/dags": ROOT / "pipelines" / "kpi" / "dags", "/opt/kpi": ROOT,
                "/home/kpi/notebooks": ROOT / "notebooks"}
# the programs started, in order: (workload, containers started, kind)
PROGRAMS = (
    ("Job", f"{RELEASE}-run-airflow-migrations", "job"),
    ("Job", f"{RELEASE}-db-bootstrap-", "job"),
    ("Deployment", f"{RELEASE}-mlflow", "daemon"),
    ("Deployment", f"{RELEASE}-api-server", "daemon"),
    ("Deployment", f"{RELEASE}-scheduler", "daemon"),
    ("Deployment", f"{RELEASE}-dag-processor", "daemon"),
    ("Deployment", f"{RELEASE}-triggerer", "daemon"),
    ("Deployment", f"{RELEASE}-dashboard", "daemon"),
    ("Deployment", f"{RELEASE}-jupyterlab", "daemon"),
    ("Deployment", f"{RELEASE}-scoring", "daemon"),
)
# sidecars whose work needs a cluster (trimming logs of pods that come and go)
SKIPPED_CONTAINERS = {"scheduler-log-groomer", "dag-processor-log-groomer", "triggerer-log-groomer"}


class PlatformError(RuntimeError):
    """The local platform cannot start or is not in the state a command needs."""


def state_dir(home: Path | None = None) -> Path:
    """``<KPI_HOME>/platform``."""
    from kpi.settings import get_settings

    return (home or get_settings().home_dir) / "platform"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------------------------------------
# From the render to process specifications
# --------------------------------------------------------------------------------------------------------


@dataclass
class Process:
    """One program of the platform, as its pod would run it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    kind: str = "daemon"  # daemon | job
    files: dict[Path, tuple[str, int]] = field(default_factory=dict)  # local path -> (content, mode)
    dirs: list[Path] = field(default_factory=list)


@dataclass
class Render:
    """The objects of one render, with helpers to resolve what pods reference."""

    docs: list[dict]
    ports: dict[str, int]  # service name -> local port
    state: Path

    def secret(self, name: str) -> dict[str, str]:
        obj = named(self.docs, "Secret", name)
        values = {k: b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        values.update(obj.get("stringData") or {})
        return values

    def config_map(self, name: str) -> dict[str, str]:
        return dict(named(self.docs, "ConfigMap", name).get("data") or {})

    def service_ports(self) -> dict[tuple[str, int], int]:
        """(service name, service port) -> local port; a Service with several ports keeps their offsets."""
        mapped = {}
        for obj in self.docs:
            if obj["kind"] != "Service":
                continue
            name = obj["metadata"]["name"].removeprefix(f"{RELEASE}-").removesuffix("-headless")
            if name not in self.ports:
                continue
            first = obj["spec"]["ports"][0]["port"]
            for port in obj["spec"]["ports"]:
                mapped[(obj["metadata"]["name"], port["port"])] = self.ports[name] + port["port"] - first
        return mapped

    def image_paths(self) -> dict[str, Path]:
        """Container path -> local path, longest first: the images' layout and the state's mounts."""
        paths = {**IMAGE_LAYOUT, "/opt/airflow": self.state / "airflow", "/home/kpi": self.state / "home"}
        return dict(sorted(paths.items(), key=lambda kv: -len(kv[0])))

    def rewrite(self, text: str, mounts: dict[str, Path] | None = None) -> str:
        """Service addresses to loopback ports; container paths (a pod's ``mounts``, then the images'
        layout) to local paths, in one pass so that a local path is never mapped twice."""
        addresses = self.service_ports()

        def address(match: re.Match) -> str:
            local = addresses.get((match.group(1), int(match.group(3))))
            return f"127.0.0.1:{local}" if local else match.group(0)

        text = re.sub(rf"\b({RELEASE}-[a-z0-9-]+?)(\.{RELEASE}(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)\b",
                      address, text)
        paths = {**self.image_paths(), **(mounts or {})}
        pattern = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
        return re.sub(rf"(?<![\w/.])({pattern})(?=/|\b|$)", lambda m: str(paths[m.group(1)]), text)


def _expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion ($$ escapes; unknown variables stay as written)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(render_: Render, container: dict, mounts: dict[str, Path] | None = None) -> dict[str, str]:
    """The environment a container gets: envFrom, then env (secretKeyRef, configMapKeyRef, $(VAR)), rewritten
    (``mounts``: the container's mount paths -> local paths)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(render_.config_map(source["configMapRef"]["name"]))
        elif "secretRef" in source:
            env.update(render_.secret(source["secretRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = render_.secret(ref["name"])[ref["key"]]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = render_.config_map(ref["name"])[ref["key"]]
    return {k: render_.rewrite(v, mounts) for k, v in env.items()}


def _dockerfile(image: str) -> Path | None:
    name = image.rsplit("/", 1)[-1].split(":")[0].removeprefix("kpi-")
    path = ROOT / "images" / name / "Dockerfile"
    return path if path.exists() else None


def image_env(image: str) -> dict[str, str]:
    """The ENV of one of our images (images/<name>/Dockerfile), PATH left to this machine."""
    dockerfile = _dockerfile(image)
    if dockerfile is None:
        return {}
    env = {}
    for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", dockerfile.read_text(), re.MULTILINE):
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", block.replace("\\\n", " ")):
            if key != "PATH":
                env[key] = value
    return env


def image_command(image: str) -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of one of our images (images/<name>/Dockerfile); the Airflow image's entrypoint
    (dumb-init + /entrypoint, which waits for the database and execs its arguments) runs its arguments."""
    dockerfile = _dockerfile(image)
    if dockerfile is None or dockerfile.parent.name == "airflow":
        return [], []
    text = dockerfile.read_text()

    def instruction(word: str) -> list[str]:
        found = re.findall(rf"^{word}\s+(\[.*\])\s*$", text, re.MULTILINE)
        return json.loads(found[-1]) if found else []

    return instruction("ENTRYPOINT"), instruction("CMD")


def _mounts(render_: Render, spec: dict, container: dict, pod: str) -> tuple[dict[str, Path], dict[Path, tuple[str, int]], list[Path]]:
    """Container path -> local path for the container's mounts, with the files and folders to create."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    paths, files, dirs = {}, {}, []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        # a mount under a path of the image lands where that path is here; any other gets its own folder
        local = Path(render_.rewrite(target)) if target.startswith(tuple(render_.image_paths())) else (
            render_.state / "volumes" / pod / mount["name"])
        if "configMap" in volume or "secret" in volume:
            data = (render_.config_map(volume["configMap"]["name"]) if "configMap" in volume
                    else render_.secret(volume["secret"]["secretName"]))
            mode = 0o644 if "configMap" in volume else 0o600
            if mount.get("subPath"):
                files[local] = (render_.rewrite(data[mount["subPath"]]), mode)
            else:
                files.update({local / key: (render_.rewrite(value) if mode == 0o644 else value, mode)
                              for key, value in data.items()})
        else:  # emptyDir
            dirs.append(local)
        paths[target] = local
    return paths, files, dirs


def _argv(render_: Render, container: dict, env: dict[str, str], paths: dict[str, Path]) -> list[str]:
    entrypoint, cmd = image_command(container["image"])
    argv = container.get("command") or entrypoint
    argv = argv + (container.get("args") if "args" in container else ([] if container.get("command") else cmd))
    return [_expand(render_.rewrite(arg, paths), env) for arg in argv]


def _listen_here(render_: Render, workload: dict, container: dict, argv: list[str], env: dict[str, str]) -> list[str]:
    """Servers listen on 127.0.0.1 and on the local port of their Service."""
    service = workload["metadata"]["name"].removeprefix(f"{RELEASE}-")
    ports = {p["containerPort"] for p in container.get("ports", [])}
    local = render_.ports.get(service)
    out = []
    for arg in argv:
        arg = arg.replace("0.0.0.0", "127.0.0.1")
        if local and ports:
            for port in ports:
                arg = re.sub(rf"^(--[\w.-]+=)?{port}$", rf"\g<1>{local}", arg)
        out.append(arg)
    if service == "jupyterlab" and container["name"] == "jupyterlab" and os.geteuid() == 0:
        out.append("--allow-root")  # the image runs it as uid 10001; here the machine's user is root
    if service == "api-server":
        env.update({"AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(local)})
    if service == "triggerer":
        env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(local)
    return out


def plan(render_: Render) -> list[Process]:
    """The processes of the platform in start order, each from its workload in the render."""
    venv_bin = Path(sys.executable).parent
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("KPI_", "AIRFLOW", "MLFLOW", "AWS_"))}
    base_env.update({"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "SPARK_LOCAL_IP": "127.0.0.1",
                     "PYSPARK_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"})
    worker_log_port = free_port()
    processes = []
    for kind, name, role in PROGRAMS:
        workload = next((o for o in render_.docs if o["kind"] == kind and o["metadata"]["name"].startswith(name)),
                        None)
        if workload is None:  # a component the values file leaves out (jupyterlab.enabled: false)
            continue
        spec = workload["spec"]["template"]["spec"]
        pod = workload["metadata"]["name"]
        for container in containers(spec):
            if container["name"] in SKIPPED_CONTAINERS:
                continue
            paths, files, dirs = _mounts(render_, spec, container, pod)
            image = {k: render_.rewrite(v, paths) for k, v in image_env(container["image"]).items()}
            env = {**base_env, **image, **container_env(render_, container, paths)}
            if "AIRFLOW_HOME" in env or "airflow" in " ".join(container.get("args", [])):
                env.update({"AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port)})
            env["KPI_SPARK_BACKEND"] = "local"
            argv = _listen_here(render_, workload, container, _argv(render_, container, env, paths), env)
            is_init = container in spec.get("initContainers", [])
            processes.append(Process(name=f"{pod}/{container['name']}", argv=argv, env=env,
                                     kind="job" if is_init or role == "job" else "daemon",
                                     files=files, dirs=dirs))
    return processes


# --------------------------------------------------------------------------------------------------------
# Postgres and the S3 server, as the chart's StatefulSets and bootstrap scripts set them up
# --------------------------------------------------------------------------------------------------------


def start_postgres(render_: Render) -> dict:
    """Initialise (first time) and start Postgres the way the postgres image does, then run the chart's init
    script on a fresh data directory; returns the superuser URL's parts."""
    from kpi.db import _as_pg_user, _chown_for_pg, _pg_bindir

    statefulset = named(render_.docs, "StatefulSet", f"{RELEASE}-postgres")
    env = container_env(render_, statefulset["spec"]["template"]["spec"]["containers"][0])
    user, password = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]
    bindir, data, port = _pg_bindir(), render_.state / "postgres" / "data", render_.ports["postgres"]
    fresh = not (data / "PG_VERSION").exists()
    data.parent.mkdir(parents=True, exist_ok=True)
    data.parent.chmod(0o755)
    if fresh:
        data.mkdir(exist_ok=True)
        _chown_for_pg(data)
        with tempfile.NamedTemporaryFile("w", dir=data.parent, delete=False) as pwfile:
            pwfile.write(password)
        _chown_for_pg(Path(pwfile.name))
        try:
            _run(_as_pg_user([str(bindir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile.name}",
                              "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                              "--locale=C.UTF-8"]), "initdb")
        finally:
            os.unlink(pwfile.name)
    sock = render_.state / "postgres" / "run"
    sock.mkdir(exist_ok=True)
    _chown_for_pg(sock)
    log = render_.state / "logs" / "postgres.log"
    log.touch()
    _chown_for_pg(log)
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    _run(_as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                      "start"]), "pg_ctl start")
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    if fresh:
        init = render_.config_map(f"{RELEASE}-postgres-init")["10-databases.sh"]
        sql = render_.state / "postgres" / "sql-init"
        sql.mkdir(exist_ok=True)
        for key, text in render_.config_map(f"{RELEASE}-postgres-sql").items():
            (sql / key).write_text(text)
        script = render_.state / "postgres" / "10-databases.sh"
        script.write_text(init.replace("/opt/kpi/sql-init", str(sql)))
        _run(["bash", str(script)], "the chart's Postgres init script",
             env={**os.environ, **env, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGPASSWORD": password,
                  "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    return {"pid": pid, "data": str(data), "bindir": str(bindir), "url": f"postgresql://{user}:{password}@127.0.0.1:{port}/postgres"}


def start_object_storage(render_: Render):
    """SeaweedFS with the MinIO chart's root user, and the buckets and read-write user its Job creates."""
    from kpi.s3server import SeaweedS3

    minio = named(render_.docs, "StatefulSet", f"{RELEASE}-minio")
    server_env = container_env(render_, minio["spec"]["template"]["spec"]["containers"][0])
    job = next(o for o in render_.docs if o["kind"] == "Job" and o["metadata"]["name"].startswith(f"{RELEASE}-minio-bootstrap"))
    job_env = container_env(render_, job["spec"]["template"]["spec"]["containers"][0])
    folder = render_.state / "s3"
    folder.mkdir(parents=True, exist_ok=True)
    server = SeaweedS3(folder, buckets=job_env["BUCKETS"].split(), access_key=server_env["MINIO_ROOT_USER"],
                       secret_key=server_env["MINIO_ROOT_PASSWORD"], s3_port=render_.ports["minio"],
                       users={job_env["PIPELINES_ACCESS_KEY"]: job_env["PIPELINES_SECRET_KEY"]})
    server.start(timeout=120)
    return server


def _run(argv: list[str], what: str, env: dict | None = None, log: Path | None = None) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise PlatformError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")


# --------------------------------------------------------------------------------------------------------
# up / down / status
# --------------------------------------------------------------------------------------------------------


def _load_render(state: Path, env_name: str, ports: dict[str, int]) -> Render:
    """Render the chart; reuse the Secrets of the first render (the chart's `lookup`, on a machine)."""
    with tempfile.TemporaryDirectory() as folder:
        docs = objects(render(assemble(Path(folder)), load_values(env_name)))
    saved = state / "secrets.json"
    if saved.exists():
        kept = json.loads(saved.read_text())
        for obj in docs:
            if obj["kind"] == "Secret" and obj["metadata"]["name"] in kept:
                obj.pop("stringData", None)
                obj["data"] = kept[obj["metadata"]["name"]]
    else:
        secrets = {o["metadata"]["name"]: {**(o.get("data") or {}), **{
            k: __import__("base64").b64encode(v.encode()).decode() for k, v in (o.get("stringData") or {}).items()}}
            for o in docs if o["kind"] == "Secret"}
        saved.write_text(json.dumps(secrets))
        saved.chmod(0o600)
    return Render(docs=docs, ports=ports, state=state)


def _ports(choice: str, state: Path) -> dict[str, int]:
    saved = state / "ports.json"
    if saved.exists():
        return json.loads(saved.read_text())
    if choice == "auto":
        ports = {name: free_port() for name in SERVICES}
        ports["minio"] = free_port()
    else:
        ports = {"postgres": 5432, "minio": 9000, "mlflow": 5000, "api-server": 8080, "dashboard": 8501,
                 "triggerer": 8794, "jupyterlab": 8888, "scoring": 8000}
        taken = [f"{name} :{port}" for name, port in ports.items() if _port_taken(port)]
        if taken:
            raise PlatformError(f"ports in use on 127.0.0.1: {', '.join(taken)} (stop what holds them, or run "
                                "`kpi platform up --ports auto` to pick free ones)")
    saved.write_text(json.dumps(ports))
    return ports


def _alive(pid: int) -> bool:
    try:  # our own child that exited is a zombie until reaped: reap it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(home: Path | None = None) -> dict:
    """What ``up`` recorded (URLs, PIDs, logins); raises when the platform was never started."""
    path = state_dir(home) / "state.json"
    if not path.exists():
        raise PlatformError(f"no local platform state at {path}: run `task platform-up` first")
    return json.loads(path.read_text())


def status(home: Path | None = None) -> dict:
    """Each recorded process and whether it still runs."""
    state = read_state(home)
    running = {name: _alive(pid) for name, pid in state["pids"].items()}
    return {"running": running, "all_running": all(running.values()), "urls": state["urls"]}


def _start(process: Process, logs: Path) -> subprocess.Popen:
    for path in process.dirs:
        path.mkdir(parents=True, exist_ok=True)
    for path, (content, mode) in process.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    log = open(logs / f"{process.name.replace('/', '__')}.log", "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(process.argv, env=process.env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def health(urls: dict[str, str], warehouse_url: str) -> dict[str, bool]:
    """Whether each component answers its health check (Airflow's scheduler, dag-processor and triggerer
    through the API server's health endpoint, as `kubectl get pods` readiness would not tell)."""
    import psycopg

    checks: dict[str, bool] = {}
    try:
        with psycopg.connect(warehouse_url, connect_timeout=3) as conn:
            checks["postgres"] = conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        checks["postgres"] = False
    endpoints = [("mlflow", f"{urls['mlflow']}/health"), ("dashboard", f"{urls['dashboard']}/_stcore/health"),
                 ("s3", f"{urls['s3']}/")]
    if "jupyterlab" in urls:
        endpoints.append(("jupyterlab", f"{urls['jupyterlab']}/api"))
    if "scoring" in urls:
        endpoints.append(("scoring", f"{urls['scoring']}/healthz"))
    for name, url in endpoints:
        try:
            code, _ = _get(url)
            checks[name] = code in (200, 403) if name == "s3" else code == 200
        except OSError:
            checks[name] = False
    try:
        code, body = _get(f"{urls['airflow']}/api/v2/monitor/health")
        report = json.loads(body) if code == 200 else {}
    except (OSError, ValueError):
        report = {}
    checks["airflow api-server"] = report.get("metadatabase", {}).get("status") == "healthy"
    for part in ("scheduler", "dag_processor", "triggerer"):
        checks[f"airflow {part.replace('_', '-')}"] = report.get(part, {}).get("status") == "healthy"
    return checks


def up(home: Path | None = None, ports: str = "service", timeout: float = 600.0, env_name: str = "local") -> dict:
    """Start the platform in the background and return once every component answers its health check.

    Args:
        home: KPI_HOME (state under ``<home>/platform``).
        ports: ``service`` (each Service's own port, as `task ui` forwards them) or ``auto`` (free ports).
        timeout: seconds to wait for every health check.
        env_name: the values file, ``values-<env_name>.yaml``.

    Returns:
        URLs, the Airflow login, PIDs, the differences from the cluster and the start time in seconds.
    """
    started = time.monotonic()
    state = state_dir(home)
    if (state / "state.json").exists():
        current = status(home)
        if current["all_running"]:
            return {**read_state(home), "already_running": True}
        raise PlatformError(f"a previous local platform is partly running: {current['running']} "
                            "(run `task platform-down` first)")
    for folder in ("logs", "airflow"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    render_ = _load_render(state, env_name, _ports(ports, state))
    logs = state / "logs"
    pids: dict[str, int] = {}
    children: dict[str, subprocess.Popen] = {}  # polled: a dead child stays a zombie until reaped
    record = {"pids": pids, "state_dir": str(state)}
    try:
        pg = start_postgres(render_)
        pids["postgres"] = pg["pid"]
        record["postgres"] = {"data": pg["data"], "bindir": pg["bindir"]}
        s3 = start_object_storage(render_)
        pids["s3"] = s3.proc.pid
        processes = plan(render_)
        for process in processes:
            if process.kind == "job":
                proc = _start(process, logs)
                if proc.wait(timeout=timeout) != 0:
                    tail = (logs / f"{process.name.replace('/', '__')}.log").read_text()[-2000:]
                    raise PlatformError(f"{process.name} exited with {proc.returncode}: {tail}")
            else:
                children[process.name] = _start(process, logs)
                pids[process.name] = children[process.name].pid
        ui = render_.secret(f"{RELEASE}-airflow-ui")
        urls = {"airflow": f"http://127.0.0.1:{render_.ports['api-server']}",
                "mlflow": f"http://127.0.0.1:{render_.ports['mlflow']}",
                "dashboard": f"http://127.0.0.1:{render_.ports['dashboard']}",
                "s3": f"http://127.0.0.1:{render_.ports['minio']}",
                "postgres": f"127.0.0.1:{render_.ports['postgres']}"}
        if any(p.name.startswith(f"{RELEASE}-jupyterlab/") for p in processes):
            urls["jupyterlab"] = f"http://127.0.0.1:{render_.ports['jupyterlab']}"
            record["jupyterlab_token"] = render_.secret(f"{RELEASE}-jupyterlab")["token"]
        if any(p.name.startswith(f"{RELEASE}-scoring/") for p in processes):
            urls["scoring"] = f"http://127.0.0.1:{render_.ports['scoring']}"
        warehouse = render_.rewrite(render_.secret(f"{RELEASE}-warehouse")["url"])
        record.update({"urls": urls, "airflow_login": {"username": "admin", "password": ui["admin-password"]},
                       "warehouse_url": warehouse, "differences": DIFFERENCES, "release": RELEASE})
        (state / "state.json").write_text(json.dumps(record, indent=2))
        (state / "state.json").chmod(0o600)
        deadline = time.monotonic() + timeout
        while True:
            checks = health(urls, warehouse)
            dead = [name for name, child in children.items() if child.poll() is not None]
            dead += [name for name in ("postgres", "s3") if not _alive(pids[name])]
            if dead:
                raise PlatformError(f"exited during start: {dead} (logs in {logs})")
            if all(checks.values()):
                break
            if time.monotonic() > deadline:
                raise PlatformError(f"not healthy after {timeout:.0f} s: "
                                    f"{[k for k, ok in checks.items() if not ok]} (logs in {logs})")
            time.sleep(2)
    except BaseException:
        (state / "state.json").write_text(json.dumps(record, indent=2))
        down(home)
        raise
    return {**record, "health": checks, "seconds": round(time.monotonic() - started, 1)}


def _stop_pid(pid: int, grace: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def down(home: Path | None = None, wipe: bool = False) -> dict:
    """Stop every process ``up`` started, by PID (Postgres with pg_ctl, the S3 server with SIGKILL, which is
    the only signal `weed` obeys promptly); ``wipe`` also deletes the state (data, logs, Secrets)."""
    from kpi.db import _as_pg_user

    state = state_dir(home)
    path = state / "state.json"
    stopped = []
    if path.exists():
        record = json.loads(path.read_text())
        for name, pid in record.get("pids", {}).items():
            if name == "postgres":
                if _alive(pid):
                    subprocess.run(_as_pg_user([str(Path(record["postgres"]["bindir"]) / "pg_ctl"), "-D",
                                                record["postgres"]["data"], "-m", "fast", "-w", "stop"]),
                                   capture_output=True, check=False)
            elif name == "s3":
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                _stop_pid(pid, grace=15)
            stopped.append(name)
        still = [name for name, pid in record.get("pids", {}).items() if _alive(pid)]
        if still:
            raise PlatformError(f"still running after stop: {still}")
        path.unlink()
    if wipe and state.exists():
        shutil.rmtree(state)
    return {"stopped": stopped, "wiped": wipe}


def summary_lines(result: dict) -> list[str]:
    """The UIs and login, as `task ui` prints them for the cluster."""
    urls, login = result["urls"], result["airflow_login"]
    return [f"Airflow    {urls['airflow']}  ({login['username']} / {login['password']})",
            f"MLflow     {urls['mlflow']}",
            f"Dashboard  {urls['dashboard']}",
            f"S3         {urls['s3']}  (SeaweedFS; keys in Secret kpi-s3-credentials: {result['state_dir']}/secrets.json)",
            *([f"JupyterLab {urls['jupyterlab']}/lab?token={result['jupyterlab_token']}"] if "jupyterlab" in urls else []),
            *([f"Scoring    {urls['scoring']}/docs  (POST /score, GET /model, GET /healthz)"] if "scoring" in urls else []),
            f"Postgres   {urls['postgres']}",
            f"Logs       {result['state_dir']}/logs    stop with: task platform-down"]
