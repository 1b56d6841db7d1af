"""Render a kustomization of deploy/ as `kubectl kustomize` does, for the parts deploy/ uses:
`resources` (files and kustomization folders), `configMapGenerator` (literals; behavior create
or merge; the name suffix of kustomize's content hash, with references renamed), `namespace`,
and `patches` of JSON-patch (RFC 6902) operations with a `target` (kind, name). Anything else in
a kustomization is an error, so that the manifests cannot drift into features rendered here
differently.

    python deploy/render.py deploy/overlays/gpu      # the manifests, as one YAML stream
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
GENERATED = "__generated__"  # marks a generated ConfigMap until its name gets its suffix
REFERENCES = ("configMapRef", "configMapKeyRef", "configMap")  # envFrom, env, volumes


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects of the kustomization in `folder` (the order aside, kustomize sorts them)."""
    objects = _build(folder)
    renames = {}
    for obj in objects:
        if obj.pop(GENERATED, False):
            name = obj["metadata"]["name"]
            renames[name] = obj["metadata"]["name"] = f"{name}-{_suffix(obj)}"
    _rename_references(objects, renames)
    return objects


def _build(folder: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - FIELDS
    if unknown:
        raise ValueError(f"{folder}: kustomization fields not rendered here: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            objects += _build(path)
        else:
            objects += [o for o in yaml.safe_load_all(path.read_text()) if o is not None]
    _generate(spec.get("configMapGenerator", []), objects, folder)
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


def _generate(
    generators: list[dict[str, Any]], objects: list[dict[str, Any]], folder: Path
) -> None:
    for generator in generators:
        name, behavior = generator["name"], generator.get("behavior", "create")
        data = dict(literal.split("=", 1) for literal in generator.get("literals", []))
        earlier = [o for o in objects if o.get(GENERATED) and o["metadata"]["name"] == name]
        if behavior == "create" and not earlier:
            config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
            objects.append({**config_map, "data": data, GENERATED: True})
        elif behavior == "merge" and earlier:
            earlier[0]["data"].update(data)
        else:
            raise ValueError(f"{folder}: ConfigMap {name}: {behavior} is not rendered here")


def _suffix(config_map: dict[str, Any]) -> str:
    """kustomize's name suffix of a generated ConfigMap: the SHA-256 of its data, kind and name
    as Go encodes them to JSON (sorted keys, no spaces, <, > and & escaped; the name comes out
    empty in kustomize's encoding), its first 10 hex digits with 0 1 3 a e as g h k m t."""
    encoded = json.dumps(
        {"data": config_map["data"], "kind": "ConfigMap", "name": ""},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _rename_references(node: Any, renames: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in REFERENCES and isinstance(value, dict) and value.get("name") in renames:
                value["name"] = renames[value["name"]]
            else:
                _rename_references(value, renames)
    elif isinstance(node, list):
        for value in node:
            _rename_references(value, renames)


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
