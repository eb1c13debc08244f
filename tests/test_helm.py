"""deploy/helm/lineguard: ``helm lint`` and ``helm template`` run, and the rendered manifests are checked
(every container has resources and probes, no secret value anywhere, KEDA scales processors up to
the frame partitions they can use, the config is one lineguard accepts)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lineguard.config import load_settings

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "lineguard"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|(^|_)KEYS?($|_)", re.IGNORECASE)


def _helm() -> str:
    built = REPO / ".cache" / "bin" / "helm"  # `make helm-deps`
    found = str(built) if built.is_file() else shutil.which("helm")
    if found is None:
        pytest.skip("helm is not installed: run `make helm-deps` (go install helm.sh/helm/v4/cmd/helm@v4.3.2)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELM_CACHE_HOME": str(REPO / ".cache" / "helm"), "HELM_CONFIG_HOME": str(REPO / ".cache" / "helm"),
           "HELM_DATA_HOME": str(REPO / ".cache" / "helm")}
    done = subprocess.run([_helm(), *args], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def render(*sets: str) -> list[dict[str, Any]]:
    args = ["template", "plant", str(CHART)]
    for value in sets:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


# The GPU processors' Deployment (off by default), with a node selector and a toleration as a plant sets them.
GPU_SETS = ("gpuProcessors.enabled=true", "gpuProcessors.nodeSelector.nvidia\\.com/gpu\\.present=true",
            "gpuProcessors.tolerations[0].key=nvidia.com/gpu", "gpuProcessors.tolerations[0].operator=Exists",
            "gpuProcessors.tolerations[0].effect=NoSchedule")


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def gpu_manifests() -> list[dict[str, Any]]:
    return render(*GPU_SETS)


@pytest.fixture(scope="module", params=["default", "gpu"])
def each_rendering(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The chart as rendered by default and with the GPU processors: both must pass the common checks."""
    return request.getfixturevalue("manifests" if request.param == "default" else "gpu_manifests")


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def containers(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for m in manifests:
        spec = m.get("spec", {}).get("template", {}).get("spec")
        if spec:
            for c in spec.get("initContainers", []) + spec["containers"]:
                found.append((f"{m['metadata']['name']}/{c['name']}", c))
    return found


def test_helm_lint_passes() -> None:
    out = helm("lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


def test_every_part_is_rendered(manifests: list[dict[str, Any]]) -> None:
    deployments = by_kind(manifests, "Deployment")
    assert set(deployments) == {"plant-processor", "plant-sink-clickhouse", "plant-sink-heatmaps", "plant-sink-parts",
                                "plant-sink-labels", "plant-sink-shadow", "plant-api", "plant-parts-line1", "plant-parts-line2"}
    assert set(by_kind(manifests, "Service")) == {"plant-api"}
    assert set(by_kind(manifests, "ConfigMap")) == {"plant-config"}
    assert set(by_kind(manifests, "ScaledObject")) == {"plant-processor"}
    commands = {name: d["spec"]["template"]["spec"]["containers"][0]["args"] for name, d in deployments.items()}
    assert commands["plant-processor"] == ["process"] and commands["plant-api"] == ["serve"]
    assert commands["plant-sink-clickhouse"] == ["sink", "clickhouse"]
    assert commands["plant-sink-heatmaps"] == ["sink", "heatmaps"]
    assert commands["plant-sink-parts"] == ["sink", "parts"]
    assert commands["plant-sink-labels"] == ["sink", "labels"]
    assert commands["plant-sink-shadow"] == ["sink", "shadow"]
    # one part service per line, never two at once (both would decide the line's parts)
    for line in ("line1", "line2"):
        assert commands[f"plant-parts-{line}"] == ["parts", "--line", line]
        spec = deployments[f"plant-parts-{line}"]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    # The API's Service selects the API pods only.
    service = by_kind(manifests, "Service")["plant-api"]
    api_labels = deployments["plant-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= api_labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"


def test_every_container_has_resources_and_both_probes(each_rendering: list[dict[str, Any]]) -> None:
    found = containers(each_rendering)
    deployments = by_kind(each_rendering, "Deployment")
    assert len(found) == 7 + ("plant-processor-gpu" in deployments) + sum(n.startswith("plant-parts-") for n in deployments)
    for name, c in found:
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["cpu"], name
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], name
        assert c["livenessProbe"] and c["readinessProbe"], name
        if "processor" in name or "sink" in name or "parts" in name:
            # Liveness cheap, readiness the component's own "consuming (with a model)".
            assert c["livenessProbe"]["httpGet"]["path"] == "/live"
            assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
            port = c["readinessProbe"]["httpGet"]["port"]
            assert port in {p["name"] for p in c["ports"]}


def test_no_plain_text_secret_anywhere(each_rendering: list[dict[str, Any]]) -> None:
    manifests = each_rendering
    assert not by_kind(manifests, "Secret"), "the chart must reference an existing Secret, not make one"
    for name, c in containers(manifests):
        for env in c.get("env", []):
            if SECRET_NAME.search(env["name"]):
                assert "value" not in env, f"{name}: {env['name']} has a plain value"
    config = yaml.safe_load(by_kind(manifests, "ConfigMap")["plant-config"]["data"]["lineguard.yaml"])

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)
        elif SECRET_NAME.search(path.rsplit(".", 1)[-1]) and not path.endswith("_file"):
            pytest.fail(f"config {path} holds a secret value")

    walk(config, "")
    # Every secret file the config names comes from the one existing Secret, mounted read-only.
    deployment = by_kind(manifests, "Deployment")["plant-processor"]["spec"]["template"]["spec"]
    (secret_volume,) = [v for v in deployment["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == "lineguard"
    mount = [m for m in deployment["containers"][0]["volumeMounts"] if m["name"] == secret_volume["name"]][0]
    assert mount["readOnly"] is True
    assert config["sinks"]["clickhouse"]["password_file"].startswith(mount["mountPath"] + "/")


def test_the_config_is_one_lineguard_accepts(manifests: list[dict[str, Any]], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LINEGUARD_"):
            monkeypatch.delenv(key)
    path = tmp_path / "lineguard.yaml"
    path.write_text(by_kind(manifests, "ConfigMap")["plant-config"]["data"]["lineguard.yaml"])
    settings = load_settings(path)  # ConfigError on any unknown or invalid setting
    assert settings.processor.lines == ["*"] and settings.processor.model_source == "object_store"
    assert settings.metrics_host == "0.0.0.0"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert settings.processor.metrics_port == settings.sinks.metrics_port == values["metricsPort"]
    # A worker's CPU limit and its ONNX Runtime threads are one number.
    processor = by_kind(manifests, "Deployment")["plant-processor"]["spec"]["template"]["spec"]["containers"][0]
    assert int(processor["resources"]["limits"]["cpu"]) == settings.processor.inference_threads == values["processor"]["cpus"]


def test_scaled_object_scales_processors_up_to_their_partitions(manifests: list[dict[str, Any]]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    scaled = by_kind(manifests, "ScaledObject")["plant-processor"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "plant-processor"
    assert scaled["spec"]["maxReplicaCount"] == len(values["lines"]) * values["kafka"]["framePartitions"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == values["processor"]["consumerGroup"]
    assert trigger["metadata"]["bootstrapServers"] == values["kafka"]["bootstrapServers"]
    # Another plant: 3 lines x 6 partitions.
    other = by_kind(render("lines={a,b,c}", "kafka.framePartitions=6", "processor.cpus=2"), "ScaledObject")
    assert other["plant-processor"]["spec"]["maxReplicaCount"] == 18


def test_refuses_without_an_existing_secret() -> None:
    done = helm("template", "plant", str(CHART), "--set", "existingSecret=", check=False)
    assert done.returncode != 0 and "existingSecret" in done.stderr


def test_gpu_processors_are_off_by_default_and_get_one_gpu_each(manifests: list[dict[str, Any]],
                                                                  gpu_manifests: list[dict[str, Any]],
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "plant-processor-gpu" not in by_kind(manifests, "Deployment")
    deployments = by_kind(gpu_manifests, "Deployment")
    # The GPU Deployment comes beside the others, which are unchanged.
    assert set(deployments) - {"plant-processor-gpu"} == set(by_kind(manifests, "Deployment"))
    values = yaml.safe_load((CHART / "values.yaml").read_text())["gpuProcessors"]
    gpu = deployments["plant-processor-gpu"]
    assert gpu["spec"]["replicas"] == values["replicas"]
    pod = gpu["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["process"]
    assert container["image"] == f"{values['image']['repository']}:{values['image']['tag']}"
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["nvidia.com/gpu"] == 1 and "nvidia.com/gpu" not in requests  # extended resource: the limit
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # Its own pods only: the KEDA-scaled CPU Deployment's selector does not take them.
    labels = gpu["spec"]["template"]["metadata"]["labels"]
    cpu_selector = deployments["plant-processor"]["spec"]["selector"]["matchLabels"]
    assert not cpu_selector.items() <= labels.items()
    # A first TensorRT build fits in the startup probe's window.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= values["startupSeconds"]
    # The env over the shared config is a valid lineguard configuration: GPU 0 of the pod, FP16, threads = cores.
    for key in list(os.environ):
        if key.startswith("LINEGUARD_"):
            monkeypatch.delenv(key)
    path = tmp_path / "lineguard.yaml"
    path.write_text(by_kind(gpu_manifests, "ConfigMap")["plant-config"]["data"]["lineguard.yaml"])
    for env in container["env"]:
        if env["name"] != "LINEGUARD_CONFIG":
            monkeypatch.setenv(env["name"], env["value"])
    settings = load_settings(path)
    assert settings.processor.device_id == 0 and settings.processor.precision == values["precision"]
    assert settings.processor.batching.max_batch == values["maxBatch"]
    assert int(limits["cpu"]) == settings.processor.inference_threads == values["cpus"]
    # Under the writable state volume (the root filesystem is read-only).
    state = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "state")
    assert str(settings.processor.trt_cache_dir).startswith(state + "/")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
