"""deploy/k8s against the code: what the manifests tell the app (settings, paths, ports, the
drain) is what the app reads and serves, and the objects agree with one another.
Each test runs on every render that serves (each overlay, alone and with each component)."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.fastpath import api_routes
from app.core.config import Settings
from app.main import create_app
from tests.deploy.conftest import REPO, validator
from training.cli import build_parser

SERVING = [name for name, (k, _) in validator.RENDERS.items() if k.startswith("overlays/")]
GPU = {name for name in SERVING if name.split("+")[0] == "gpu"}
KEYS_SECRET = "human-numbers-keys"
DRAIN_MARGIN_S = 5  # after the drain: the lifespan's end (engines stopped, Redis closed)

Obj = dict[str, Any]


@pytest.fixture(params=SERVING)
def render(request: pytest.FixtureRequest, renders: dict[str, list[Obj]]) -> tuple[str, list[Obj]]:
    return request.param, renders[request.param]


def only(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def server(objs: list[Obj]) -> Obj:
    (container,) = [c for c in pod(only(objs, "Deployment"))["containers"] if c["name"] == "server"]
    return container


def containers(objs: list[Obj]) -> list[Obj]:
    """Every container that runs the image: the server's, its init container, the Job's."""
    spec, job = pod(only(objs, "Deployment")), pod(only(objs, "Job"))
    return spec.get("initContainers", []) + spec["containers"] + job["containers"]


def environment(objs: list[Obj], container: Obj) -> dict[str, str | None]:
    """The container's variables: its ConfigMaps' data, then its env entries (which win);
    None for a value taken from a Secret."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, "settings come from ConfigMaps alone"
        env |= only(objs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env


def container_port(container: Obj, port: int | str) -> int:
    """A port by number or by the container's name for it."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def labels_of(obj: Obj) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"]["labels"])


def settings_of(objs: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the server's pod reads them: its environment, with the Secret's files
    (read at start) stood in for by files of keys here."""
    for field in Settings.model_fields:
        monkeypatch.delenv(field, raising=False)
    for name, value in environment(objs, server(objs)).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    for setting in ("API_KEYS_FILE", "ADMIN_API_KEYS_FILE"):
        stand_in = tmp_path / setting
        stand_in.write_text(f"{setting.lower().replace('_', '-')}-0123456789abcdef\n")
        monkeypatch.setenv(setting, str(stand_in))
    monkeypatch.setenv("ACCESS_LOG", "false")  # quiet tests; no check reads it
    return Settings()


def route_table() -> set[tuple[str, str]]:
    app = create_app(Settings(STORE=Path("unused"), ACCESS_LOG=False))
    return {(r.path, m) for r in api_routes(app.routes) for m in r.methods}


def test_every_render_validates_strictly(renders) -> None:
    version = validator.KUBERNETES_VERSION
    faults = [
        f"{name}: {m}"
        for name, objs in renders.items()
        for o in objs
        if (m := validator.check(o, version))
    ]
    assert not faults
    assert validator.uncovered(validator.ROOT) == []


def test_the_validation_refuses_what_it_does_not_know(tmp_path: Path, capsys) -> None:
    root = tmp_path / "k8s"
    shutil.copytree(validator.ROOT, root)
    shutil.copytree(validator.ROOT.parent / "grafana", tmp_path / "grafana")  # the overlays' too
    server_yaml = root / "base/server.yaml"
    server_yaml.write_text(server_yaml.read_text().replace("readinessProbe:", "readinesProbe:"))
    scaled = root / "components/keda/scaled-object.yaml"
    scaled.write_text(scaled.read_text().replace("threshold:", "treshold:"))
    base = root / "base/kustomization.yaml"
    base.write_text(base.read_text().replace("- models.yaml\n", "- models.yaml\n  - widget.yaml\n"))
    (root / "base/widget.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"
    )
    assert validator.main(["--root", str(root)]) == 1
    errors = capsys.readouterr().err
    assert "Deployment/human-numbers: spec.template.spec.containers.0: Additional " in errors
    assert "'readinesProbe' was unexpected" in errors
    assert "ScaledObject/human-numbers: a prometheus trigger's metadata has" in errors
    assert "Widget/w: no schema to validate it against" in errors
    # an overlay that no render covers is named too
    shutil.copytree(root / "overlays/cpu", root / "overlays/arm")
    assert validator.uncovered(root) == ["overlays/arm"]


def test_probes_and_scraping_use_routes_the_app_serves(render) -> None:
    _, objs = render
    routes = route_table()
    container = server(objs)
    probes = {k: container[k]["httpGet"]["path"] for k in container if k.endswith("Probe")}
    assert probes == {
        "startupProbe": "/health",
        "readinessProbe": "/ready",
        "livenessProbe": "/health",
    }
    annotations = only(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    for path in [*probes.values(), annotations["prometheus.io/path"]]:
        assert (path, "GET") in routes, f"{path} is no GET route of the app"
    # before the models are in, /health answers and /ready does not
    client = TestClient(create_app(Settings(STORE=Path("unused"), ACCESS_LOG=False)))
    assert client.get(probes["livenessProbe"]).status_code == 200
    assert client.get(probes["readinessProbe"]).status_code == 503


def test_draining_pods_stay_alive_and_their_refusals_are_retried(
    render, tmp_path, monkeypatch
) -> None:
    _, objs = render
    client = TestClient(create_app(settings_of(objs, tmp_path, monkeypatch)))
    client.app.state.drain.begin()  # as SIGTERM does
    container = server(objs)
    annotations = only(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    # liveness and scraping go on through the drain (no restart mid-drain); readiness fails
    for path in (container["livenessProbe"]["httpGet"]["path"], annotations["prometheus.io/path"]):
        assert client.get(path).status_code == 200, path
    assert client.get(container["readinessProbe"]["httpGet"]["path"]).status_code == 503
    # a new request gets 503, none of it done: the ingress tries another pod, POSTs too
    assert client.post("/v1/next-word", json={"text": "one"}).status_code == 503
    ingress = only(objs, "Ingress")["metadata"]["annotations"]
    retried = ingress["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert {"http_503", "non_idempotent"} <= set(retried)


def test_every_variable_is_a_setting(render) -> None:
    _, objs = render
    for container in containers(objs):
        unknown = set(environment(objs, container)) - set(Settings.model_fields)
        assert not unknown, f"{container['name']}: {sorted(unknown)} are no Settings field"
    for spec in (pod(only(objs, "Deployment")), pod(only(objs, "Job"))):
        assert spec["enableServiceLinks"] is False  # no *_SERVICE_HOST variables either


def test_the_settings_are_valid_and_fit_the_pod(render, tmp_path, monkeypatch) -> None:
    name, objs = render
    settings = settings_of(objs, tmp_path, monkeypatch)
    container = server(objs)
    assert settings.HOST == "0.0.0.0"  # reachable from outside the pod
    assert settings.DEVICE == ("cuda" if name in GPU else "cpu")
    (models,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert settings.STORE == Path(models["mountPath"])
    assert models["readOnly"] is True
    assert settings.SESSION_BACKEND == "redis"  # replicas share sessions


def test_ports_agree(render, tmp_path, monkeypatch) -> None:
    _, objs = render
    port = settings_of(objs, tmp_path, monkeypatch).PORT
    container = server(objs)
    assert container_port(container, "http") == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container_port(container, container[probe]["httpGet"]["port"]) == port
    (service_port,) = only(objs, "Service", "human-numbers")["spec"]["ports"]
    assert container_port(container, service_port["targetPort"]) == port
    backend = only(objs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"] == {"name": "human-numbers", "port": {"name": service_port["name"]}}
    annotations = only(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    (rule,) = only(objs, "NetworkPolicy", "human-numbers")["spec"]["ingress"]
    assert [container_port(container, p["port"]) for p in rule["ports"]] == [port]


def test_the_grace_period_covers_the_drain(render, tmp_path, monkeypatch) -> None:
    _, objs = render
    drain = settings_of(objs, tmp_path, monkeypatch).DRAIN_SECONDS
    command = server(objs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    grace = pod(only(objs, "Deployment"))["terminationGracePeriodSeconds"]
    assert grace >= float(command[1]) + drain + DRAIN_MARGIN_S, (
        f"terminationGracePeriodSeconds {grace} < preStop {command[1]} s + DRAIN_SECONDS "
        f"{drain} + {DRAIN_MARGIN_S}: the kubelet would kill requests still draining"
    )
    # an answer that comes at the end of the drain still reaches its client
    annotations = only(objs, "Ingress")["metadata"]["annotations"]
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= drain
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE


def test_the_ingress_lets_the_app_refuse_large_bodies(render, tmp_path, monkeypatch) -> None:
    _, objs = render
    limit = settings_of(objs, tmp_path, monkeypatch).MAX_BODY_BYTES
    size = only(objs, "Ingress")["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/proxy-body-size"
    ]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()  # nginx's sizes
    assert int(number) * 1024 ** " kmg".index(unit or " ") > limit  # the app's JSON 413 first


def test_one_image_per_overlay_and_its_build_is_documented(render) -> None:
    name, objs = render
    images = {c["image"] for c in containers(objs)}
    tag = "cuda" if name in GPU else "cpu"
    assert images == {f"human-numbers-lm:{tag}"}
    readme = (REPO / "README.md").read_text()
    cpu_index = "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    builds = re.findall(r"docker build -t human-numbers-lm:(\w+) ([^\n#]*)", readme)
    assert (tag, f"{cpu_index} ." if tag == "cpu" else ".") in [(t, a.strip()) for t, a in builds]
    # without the build arg, the Dockerfile takes torch from PyPI: the CUDA build
    assert 'ARG TORCH_INDEX_URL=""' in (REPO / "Dockerfile").read_text()


def test_selectors_pick_the_right_pods(render) -> None:
    _, objs = render
    deployment, job = only(objs, "Deployment"), only(objs, "Job")
    # one namespace for all (a component's objects too): selectors and names reach no further
    assert {o["metadata"].get("namespace") for o in objs} == {"human-numbers"}
    pods = labels_of(deployment)
    others = [labels_of(job)] + [labels_of(s) for s in objs if s["kind"] == "StatefulSet"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": only(objs, "Service", "human-numbers")["spec"]["selector"],
        "PodDisruptionBudget": only(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": only(objs, "NetworkPolicy", "human-numbers")["spec"]["podSelector"][
            "matchLabels"
        ],
    }
    for i, spread in enumerate(pod(deployment)["topologySpreadConstraints"]):
        selectors[f"topologySpreadConstraints[{i}]"] = spread["labelSelector"]["matchLabels"]
    for what, selector in selectors.items():
        assert selects(selector, pods), f"{what} misses the server's pods"
        assert not any(selects(selector, o) for o in others), f"{what} takes other pods too"
    # exactly one autoscaler on the Deployment: two HPAs fight (AmbiguousSelector)
    scalers = [o for o in objs if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert len(scalers) == 1
    assert scalers[0]["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }


def test_gpu_only_where_asked(render, tmp_path, monkeypatch) -> None:
    name, objs = render
    resources = server(objs)["resources"]
    gpus = {k: resources[k].get("nvidia.com/gpu") for k in ("requests", "limits")}
    if name in GPU:
        assert gpus == {"requests": "1", "limits": "1"}
        assert any(
            t["key"] == "nvidia.com/gpu" for t in pod(only(objs, "Deployment"))["tolerations"]
        )
    else:
        assert gpus == {"requests": None, "limits": None}
    for container in containers(objs):  # the Job and the init container leave GPUs free
        if container is not server(objs):
            assert "nvidia.com/gpu" not in str(container.get("resources"))
    for container in containers(objs) + [
        c for s in objs if s["kind"] == "StatefulSet" for c in pod(s)["containers"]
    ]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]


def test_keys_are_files_of_the_secret(render, tmp_path, monkeypatch) -> None:
    _, objs = render
    container = server(objs)
    env = environment(objs, container)
    (volume,) = [
        v
        for v in pod(only(objs, "Deployment"))["volumes"]
        if "secret" in v and v["secret"]["secretName"] == KEYS_SECRET
    ]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    files = {i["key"]: f"{mount['mountPath']}/{i['path']}" for i in volume["secret"]["items"]}
    assert {env["API_KEYS_FILE"], env["ADMIN_API_KEYS_FILE"]} == {
        files["api-keys"],
        files["admin-keys"],
    }
    assert env["API_KEYS_FILE"] == files["api-keys"]
    assert not any(o["kind"] == "Secret" for o in objs)  # keys never in the repository
    readme = (REPO / "README.md").read_text()
    assert re.search(
        rf"create secret generic {KEYS_SECRET} \\\n\s+--from-file=api-keys=\S+ "
        rf"--from-file=admin-keys=\S+",
        readme,
    ), "README's kubectl create secret makes another Secret than the pods mount"
    # keys on: /v1 needs one, while Prometheus still scrapes /metrics without
    client = TestClient(create_app(settings_of(objs, tmp_path, monkeypatch)))
    assert client.get("/v1/models").status_code == 401
    assert client.get("/metrics").status_code == 200


def test_a_read_only_root_and_writable_paths(render, tmp_path, monkeypatch) -> None:
    _, objs = render
    uid = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert uid is not None
    for obj in (only(objs, "Deployment"), only(objs, "Job")):
        context = pod(obj)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == tuple(map(int, uid.groups()))
        assert context["fsGroup"] == context["runAsGroup"]  # the volume writable by the user
    for s in objs:
        if s["kind"] in ("Deployment", "Job", "StatefulSet"):
            spec = pod(s)
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert c["securityContext"] == {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                }, c["name"]
    store = str(settings_of(objs, tmp_path, monkeypatch).STORE)
    (train,) = pod(only(objs, "Job"))["containers"]
    for container, writes in ((server(objs), False), (train, True)):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly")  # tempfile, torch
        assert mounts[store].get("readOnly", False) is not writes


def run_shell(
    container: Obj, store: Path, path: str, timeout: float
) -> subprocess.CompletedProcess:
    command = container["command"]
    assert command[:2] == ["sh", "-c"]
    return subprocess.run(
        command,
        env={"STORE": str(store), "PATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_training_job_fills_the_store_once_and_the_pods_wait(render, tmp_path) -> None:
    _, objs = render
    (train,) = pod(only(objs, "Job"))["containers"]
    (wait,) = pod(only(objs, "Deployment"))["initContainers"]
    # `python` here records its arguments and writes a checkpoint, as train-all would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/argv\nmkdir -p "$STORE/gru/1"\n'
        'touch "$STORE/gru/1/meta.json"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    path = f"{bin_dir}:/usr/bin:/bin"
    store = tmp_path / "store"
    (store / "lost+found").mkdir(parents=True)  # a new volume's: no checkpoint
    with pytest.raises(subprocess.TimeoutExpired):  # the pods wait for the Job
        run_shell(wait, store, path, timeout=0.5)
    done = run_shell(train, store, path, timeout=10)
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:3] == ["-m", "training", "train-all"]
    args = build_parser().parse_args(argv[2:])  # the CLI takes these flags
    # only the variants without a checkpoint (none on a filled store: tests/training)
    assert args.store == store and args.missing
    cpus = float(train["resources"]["limits"]["cpu"])
    assert args.threads is not None and args.threads <= cpus  # not the node's CPUs
    assert (store / ".ready").exists()
    assert run_shell(wait, store, path, timeout=5).returncode == 0
    # run again (the Job retried, a store filled by hand): marked again
    (store / ".ready").unlink()
    assert run_shell(train, store, path, timeout=10).returncode == 0
    assert (store / ".ready").exists()
    # training that fails leaves no mark: the pods go on waiting
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    assert run_shell(train, fresh, path, timeout=10).returncode != 0
    assert not (fresh / ".ready").exists()


def test_redis_keeps_an_append_only_file_on_its_volume(render, tmp_path, monkeypatch) -> None:
    name, objs = render
    settings = settings_of(objs, tmp_path, monkeypatch)
    if name.endswith("+managed-redis"):
        (entry,) = [e for e in server(objs)["env"] if e["name"] == "REDIS_URL"]
        assert entry["valueFrom"]["secretKeyRef"] == {"name": "human-numbers-redis", "key": "url"}
        assert not [o for o in objs if o["kind"] == "StatefulSet"]
        return
    redis = only(objs, "StatefulSet", "human-numbers-redis")
    (container,) = pod(redis)["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (mount,) = container["volumeMounts"]
    assert args[args.index("--dir") + 1] == mount["mountPath"]
    assert mount["name"] in [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]]
    # REDIS_URL names the Service, on the port that reaches the container
    url = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", settings.REDIS_URL)
    assert url is not None
    service = only(objs, "Service", url[1])
    assert selects(service["spec"]["selector"], labels_of(redis))
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == int(url[2])]
    assert container_port(container, port["targetPort"]) == int(url[2])
    # only the server's pods may connect
    policy = only(objs, "NetworkPolicy", "human-numbers-redis")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels_of(redis))
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], labels_of(only(objs, "Deployment")))
    assert not selects(source["podSelector"]["matchLabels"], labels_of(only(objs, "Job")))


def test_queue_autoscaling_reads_the_metric_the_adapter_makes(renders, scraped) -> None:
    (adapter,) = renders["prometheus-adapter"]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    made = {r["name"]["as"]: r["seriesQuery"] for r in rules}
    served = {m.name for m in text_string_to_metric_families(scraped)}  # a live server's
    for name in ("num_requests_waiting", "num_requests_running"):
        assert made[name].startswith(name + "{")
        assert name in served, f"the server exports no {name}"
    (hpa,) = [o for o in renders["cpu+queue-metric"] if o["kind"] == "HorizontalPodAutoscaler"]
    (queue,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert queue["pods"]["metric"]["name"] in made
    scaled = only(renders["cpu+keda"], "ScaledObject")
    (prometheus,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    query = prometheus["metadata"]["query"]
    assert re.search(
        rf"\bnum_requests_waiting{{namespace=\"{scaled['metadata']['namespace']}\"}}", query
    )
    assert float(prometheus["metadata"]["threshold"]) == float(
        queue["pods"]["target"]["averageValue"]
    )
