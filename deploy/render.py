"""Render a kustomization of deploy/ as `kubectl kustomize` does, for the parts deploy/ uses:
`resources` (files and kustomization folders), `namespace`, and `patches` of JSON-patch
(RFC 6902) operations with a `target` (kind, name). Anything else in a kustomization is an
error, so that the manifests cannot drift into features rendered here differently.

    python deploy/render.py deploy/overlays/gpu      # the manifests, as one YAML stream
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects of the kustomization in `folder`, in the order kustomize keeps them."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - FIELDS
    if unknown:
        raise ValueError(f"{folder}: kustomization fields not rendered here: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            objects += render(path)
        else:
            objects += [o for o in yaml.safe_load_all(path.read_text()) if o is not None]
    for patch in spec.get("patches", []):
        operations = yaml.safe_load((folder / patch["path"]).read_text())
        targets = [o for o in objects if _matches(o, patch["target"])]
        if not targets:
            raise ValueError(f"{folder}: patch {patch['path']} matches no object")
        for target in targets:
            for operation in operations:
                _apply(target, operation)
    if "namespace" in spec:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = spec["namespace"]
    return objects


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    return all(
        obj["kind"] == value if key == "kind" else obj["metadata"]["name"] == value
        for key, value in target.items()
    )


def _apply(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace or remove) on `document`, in place."""
    *parents, last = [
        token.replace("~1", "/").replace("~0", "~") for token in operation["path"].split("/")[1:]
    ]
    node: Any = document
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    op, value = operation["op"], copy.deepcopy(operation.get("value"))
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, value)
            return
        if not 0 <= index < len(node):
            raise IndexError(f"{operation['path']}: no element {index}")
    elif op != "add" and last not in node:
        raise KeyError(f"{operation['path']}: no such member")
    if op in ("add", "replace"):
        node[index if isinstance(node, list) else last] = value
    elif op == "remove":
        del node[index if isinstance(node, list) else last]
    else:
        raise ValueError(f"{operation['path']}: operation {op!r} is not rendered here")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python deploy/render.py FOLDER", file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(Path(argv[0])), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
