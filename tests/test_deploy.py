"""The deployment files, checked structurally without Docker: docker-compose.gpu.yml,
deploy/Dockerfile, deploy/prometheus.yml, Grafana's provisioning and dashboard, .env.example
and deploy/init-env.sh. Nothing is built or started; no network."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

import deepguard.pipeline.metrics as metrics_module
from deepguard.pipeline.jobs import JobStore
from deepguard.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.gpu.yml"
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = ROOT / ".env.example"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "deepguard.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "deepguard.yml"

# Ray's node metrics the Grafana dashboard may query. Every node's dashboard agent exports
# them on --metrics-export-port with the "ray_" prefix:
# https://docs.ray.io/en/latest/ray-observability/reference/system-metrics.html (hardware
# utilization), defined in METRICS_GAUGES of ray/dashboard/modules/reporter/reporter_agent.py;
# test_ray_metric_names_exist_in_the_installed_ray checks them against the installed Ray.
RAY_NODE_METRICS = frozenset(
    {
        "ray_node_cpu_utilization",
        "ray_node_mem_used",
        "ray_node_mem_total",
        "ray_node_gpus_utilization",
        "ray_node_gpus_available",
        "ray_node_gram_used",
        "ray_node_gram_available",
    }
)
# the series Prometheus itself writes for every target
PROMETHEUS_SERIES = frozenset({"up"})

RAY_NODES = ("ray-head", "ray-worker-gpu", "ray-worker-cpu", "dashboard", "watch")
# where each service keeps state: the container paths that must be mounted volumes
STATE = {
    "ray-head": {"/data", "/watch", "/weights", "/weights-ro", "/jobdb", "/tmp/ray"},
    "ray-worker-gpu": {"/data", "/watch", "/weights", "/weights-ro",
                       "/var/lib/deepguard/gpu-claims"},
    "ray-worker-cpu": {"/data", "/watch", "/weights", "/weights-ro"},
    "dashboard": {"/data", "/watch", "/weights", "/weights-ro", "/jobdb"},
    "watch": {"/data", "/watch", "/weights", "/weights-ro", "/jobdb"},
    "prometheus": {"/prometheus"},
    "grafana": {"/var/lib/grafana"},
}  # fmt: skip
# storage every Ray node must see at the same path: a job's stages run on any node
SHARED_BY_RAY_NODES = ("/data", "/watch", "/weights", "/weights-ro")

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` as on a host whose
    .env sets only the required variables: defaults apply, required ones get a placeholder."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            operator = match["op"] or ""
            if operator.endswith("-"):
                return match["arg"]
            return "set-by-operator" if operator.endswith("?") else ""

        return _VARIABLE.sub(replace, value)
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    return value


def compose_variables() -> dict[str, str]:
    """Every ``${VAR...}`` the compose file uses: name → operator (``""``, ``-``, ``?``)."""

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    found = {}
    for text in strings(yaml.safe_load(COMPOSE.read_text())):
        for match in _VARIABLE.finditer(text):
            found[match["name"]] = (match["op"] or "").lstrip(":")
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source (a volume name or a host path) of a service's mounts."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found[target] = source
    return found


def is_named_volume(source: str) -> bool:
    return not source.startswith(("/", ".", "~"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


# -- the compose file -----------------------------------------------------------------------


def test_the_compose_file_runs_the_whole_service(services: dict[str, Any]) -> None:
    assert set(services) == {*RAY_NODES, "prometheus", "grafana"}


def test_every_service_has_an_image_a_healthcheck_and_a_restart_policy(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
        assert service.get("restart") == "unless-stopped", name


def test_health_checks_probe_the_ports_the_services_serve(services: dict[str, Any]) -> None:
    def probe(name: str) -> str:
        return services[name]["healthcheck"]["test"][-1]

    assert probe("dashboard") == "http://127.0.0.1:5000/api/health"
    watch_port = _option(services["watch"]["command"], "--metrics-port")
    assert probe("watch") == f"http://127.0.0.1:{watch_port}/metrics"
    assert probe("ray-head").endswith(":8265/api/gcs_healthz")
    for worker in ("ray-worker-gpu", "ray-worker-cpu"):
        assert probe(worker).endswith(":52365/api/local_raylet_healthz")
    assert probe("prometheus").endswith(":9090/-/healthy")
    assert probe("grafana").endswith(":3000/api/health")


def test_services_keep_their_state_in_declared_volumes(compose: dict[str, Any]) -> None:
    services, declared = compose["services"], set(compose["volumes"])
    used = set()
    for name, targets in STATE.items():
        mounted = mounts(services[name])
        assert targets <= set(mounted), f"{name} lacks {targets - set(mounted)}"
        for source in mounted.values():
            if is_named_volume(source):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_every_ray_node_sees_the_same_storage_at_the_same_paths(
    services: dict[str, Any],
) -> None:
    for target in SHARED_BY_RAY_NODES:
        sources = {mounts(services[name])[target] for name in RAY_NODES}
        assert len(sources) == 1, f"{target} comes from {sources}"
    for name in RAY_NODES:
        env = environment(services[name])
        assert env["DEEPGUARD_DATA_DIR"] == "/data"
        assert env["DEEPGUARD_WEIGHTS_CACHE"] == "/weights"
        assert env["DEEPGUARD_WEIGHTS_DIR"] == "/weights-ro"
        assert any(v.endswith(":/weights-ro:ro") for v in services[name]["volumes"]), name


def test_the_job_store_lives_in_its_own_volume(services: dict[str, Any]) -> None:
    for name in ("ray-head", "dashboard", "watch"):
        job_db = Path(environment(services[name])["DEEPGUARD_JOB_DB"])
        assert mounts(services[name]).get(str(job_db.parent)) == "jobdb", name


def test_services_join_the_ray_cluster_with_its_token(services: dict[str, Any]) -> None:
    for name in RAY_NODES:
        service, env = services[name], environment(services[name])
        assert env["RAY_ADDRESS"] == "ray-head:6379", name
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == "set-by-operator", f"{name}: the token must be required"
        assert env["DEEPGUARD_DEVICE"] == "auto", name  # settings travel with jobs to workers
        assert service["env_file"] == ".env", name
        script = DEPLOY / "bin" / service["command"][0]
        assert script.is_file() and os.access(script, os.X_OK), script
        if name != "ray-head":
            assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["dashboard"]["command"][1:3] == ["deepguard", "serve"]
    assert services["watch"]["command"][1:3] == ["deepguard", "watch"]
    for name in ("dashboard", "watch"):  # metrics and the API must answer beyond loopback
        assert environment(services[name])["HOST"] == "0.0.0.0"
    assert environment(services["dashboard"])["DEEPGUARD_API_TOKEN"] == "set-by-operator"


def test_gpu_workers_reserve_nvidia_gpus(services: dict[str, Any]) -> None:
    worker = services["ray-worker-gpu"]
    assert worker["profiles"] == ["gpu"]
    assert worker["command"] == ["deepguard-ray-worker", "gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    # each replica claims one GPU itself: `count: 1` would give GPU 0 to every replica
    assert all(d.get("count") == "all" for d in devices)
    assert int(worker["deploy"]["replicas"]) >= 1
    assert worker["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert worker["build"]["args"]["TORCH_VARIANT"] == ""  # PyPI's CUDA build
    others = [n for n, s in services.items() if n != "ray-worker-gpu" and "deploy" in s]
    for name in others:
        assert "reservations" not in services[name]["deploy"].get("resources", {}), name


def test_a_cpu_profile_runs_without_a_gpu(services: dict[str, Any]) -> None:
    cpu = {name for name, s in services.items() if "cpu" in s.get("profiles", [])}
    assert cpu == {"ray-worker-cpu"}
    worker = services["ray-worker-cpu"]
    assert worker["command"] == ["deepguard-ray-worker", "cpu"]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert "resources" not in worker.get("deploy", {})
    # everything but the workers runs in both profiles, on the slim (CPU PyTorch) image
    for name, service in services.items():
        if not name.startswith("ray-worker"):
            assert "profiles" not in service, name
    for name in ("ray-head", "dashboard", "watch"):
        assert services[name]["build"]["args"]["TORCH_VARIANT"] == "cpu", name


def test_both_images_build_from_one_dockerfile_with_one_python(
    services: dict[str, Any],
) -> None:
    builds = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(builds) == set(RAY_NODES)
    for name, build in builds.items():
        assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
    # Ray refuses nodes whose Python (to the patch level) or Ray differ from the head's
    for key in ("PYTHON_VERSION", "UV_IMAGE", "PIP_INDEX_URL"):
        assert len({build["args"][key] for build in builds.values()}) == 1, key
    by_image: dict[str, list[Any]] = {}
    for name, build in builds.items():
        by_image.setdefault(services[name]["image"], []).append(build)
    assert len(by_image) == 2  # deepguard-gpu and deepguard-slim
    for image, variants in by_image.items():
        assert all(v == variants[0] for v in variants), f"{image} is built two ways"


def test_the_dockerfile_creates_what_the_compose_file_mounts(services: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name in RAY_NODES:
        for target in mounts(services[name]):
            assert target in dockerfile, f"the image does not create {target} ({name})"
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored)


def test_the_image_bundles_no_weights() -> None:
    """Weights are mounted or fetched, never baked in: some (SCRFD's) are non-commercial only."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    weight_suffixes = {".onnx", ".pth", ".pt", ".npy", ".bin", ".safetensors"}
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.MULTILINE):
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        bundled = [p for p in files if p.suffix in weight_suffixes]
        assert not bundled, f"the image would bundle weight files: {bundled}"


# -- Prometheus -----------------------------------------------------------------------------


def test_prometheus_scrapes_services_of_the_compose_file(services: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job in jobs.values():
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host in services or host == "localhost", f"{target}: no such service"
    assert jobs["deepguard-dashboard"]["static_configs"][0]["targets"] == [
        f"dashboard:{_option(services['dashboard']['command'], '--port')}"
    ]
    assert jobs["deepguard-watch"]["static_configs"][0]["targets"] == [
        f"watch:{_option(services['watch']['command'], '--metrics-port')}"
    ]
    # Ray: the head's service-discovery file, on the head's /tmp/ray volume
    (discovery,) = jobs["ray"]["file_sd_configs"][0]["files"]
    assert Path(discovery).name == _ray_constant("PROMETHEUS_SERVICE_DISCOVERY_FILE")
    assert Path(discovery).parent == Path("/tmp/ray")
    head_tmp = mounts(services["ray-head"])["/tmp/ray"]
    assert mounts(services["prometheus"])["/tmp/ray"] == head_tmp
    assert "./deploy/prometheus.yml" in mounts(services["prometheus"]).values()


def test_prometheus_accepts_its_config() -> None:
    promtool = _promtool()
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# -- Grafana --------------------------------------------------------------------------------


def test_grafana_reads_the_provisioned_prometheus(services: dict[str, Any]) -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090" in services["prometheus"]["healthcheck"]["test"][-1]
    grafana = mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    ours = next(p for p in providers if p["name"] == "deepguard")
    assert grafana[ours["options"]["path"]] == "./deploy/grafana/dashboards"
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{ours['options']['path']}/{DASHBOARD.name}"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_dashboard_panels_query_metrics_the_services_export(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    known = exported_metric_names(tmp_path) | RAY_NODE_METRICS | PROMETHEUS_SERIES
    queried: set[str] = set()
    ids = []
    for panel in _panels(dashboard["panels"]):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], f"{panel['title']} queries nothing"
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']}"
            assert names <= known, f"{panel['title']} queries unknown {names - known}"
            queried |= names
    assert len(ids) == len(set(ids)), "panel ids repeat"
    # what the operator asked to see: GPU/CPU use, processing time, failures, queue, hide rate
    assert {
        "ray_node_gpus_utilization",
        "ray_node_cpu_utilization",
        "deepguard_processing_seconds_bucket",
        "deepguard_failures_total",
        "deepguard_queue_depth",
        "deepguard_hide_rate",
    } <= queried


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [
        {"record": f"dashboard:panel_{panel['id']}:{index}",
         "expr": target["expr"].replace("$__rate_interval", "1m")}
        for panel in _panels(dashboard["panels"])
        for index, target in enumerate(panel.get("targets", []))
    ]  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ray_metric_names_exist_in_the_installed_ray() -> None:
    source = _ray_source("dashboard/modules/reporter/reporter_agent.py")
    gauges = {"ray_" + name for name in re.findall(r'"(node_\w+)": Gauge\(', source)}
    assert not RAY_NODE_METRICS - gauges, RAY_NODE_METRICS - gauges


def exported_metric_names(tmp_path: Path) -> set[str]:
    """Every series name deepguard's registry can expose, with the suffixes prometheus_client
    adds (``_total`` for counters, ``_bucket``/``_count``/``_sum`` for histograms)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
    }
    with pytest.MonkeyPatch.context() as patch:  # reading GPU use imports torch: slow
        if hasattr(metrics_module, "_gpu_utilization"):
            patch.setattr(metrics_module, "_gpu_utilization", lambda: 0.0)
        registry = metrics_module.Metrics(JobStore(tmp_path / "jobs.sqlite3")).registry
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


_PROMQL_STRIP = (
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # range selectors
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),  # labels
)
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                 "and", "or", "unless", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    for pattern in _PROMQL_STRIP:
        expression = pattern.sub(" ", expression)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", expression):
        followed_by_call = expression[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group().lower() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, kind) (rate(a_bucket{job=~"x.*"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("(sum(rate(b_total[1h])) or vector(0)) / clamp_min(c + d, 1e-9)") == {
        "b_total", "c", "d",
    }  # fmt: skip
    assert metric_names("count(up == 0) or vector(0)") == {"up"}
    assert metric_names("max by (GpuIndex) (ray_node_gpus_available) offset 5m") == {
        "ray_node_gpus_available"
    }


# -- settings and scripts -------------------------------------------------------------------


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias or name.upper()]
        assert documented & {str(choice) for choice in choices}, (
            f"Settings.{name} ({', '.join(map(str, choices))}) is missing from .env.example"
        )
    variables = compose_variables()
    assert set(variables) <= documented, f"undocumented: {set(variables) - documented}"


def test_init_env_writes_secrets_and_the_profile(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env.example")
    script = shutil.copy(DEPLOY / "init-env.sh", tmp_path / "deploy" / "init-env.sh")
    result = subprocess.run([script, "cpu"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / ".env").read_text()
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", written, re.M))
    assert values["COMPOSE_PROFILES"] == "cpu"
    assert values["COMPOSE_FILE"] == COMPOSE.name
    for required, operator in compose_variables().items():
        if operator == "?":
            assert re.fullmatch(r"[0-9a-f]{24,}", values[required]), required
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0  # secrets: owner only
    again = subprocess.run([script, "gpu"], capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and (tmp_path / ".env").read_text() == written


def test_the_operator_guide_names_files_that_exist() -> None:
    guide = (DEPLOY / "OPERATIONS.md").read_text()
    paths = set(re.findall(r"`((?:deploy/|docker-compose)[\w./-]*)`", guide))
    assert paths, "the guide names no files"
    for path in paths:
        assert (ROOT / path).exists(), path


# -- helpers --------------------------------------------------------------------------------


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make test installs Debian's prometheus)")
    return promtool


def _ray_source(relative: str) -> str:
    """A file of the installed Ray, read without importing Ray (slow)."""
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        pytest.skip(f"Ray moved {relative}: check the names in this test against Ray's docs")
    return path.read_text()


def _ray_constant(name: str) -> str:
    match = re.search(rf'^{name} = "([^"]+)"', _ray_source("_private/ray_constants.py"), re.M)
    assert match, name
    return match.group(1)
