"""Turning the MODEL argument into a local ``network.pt``.

MODEL is, in this order of precedence:

* a file (or a folder holding ``network.pt`` / ``model/network.pt``);
* ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``models:/NAME/latest``;
* an MLflow run id (32 hex digits): the run's ``model/network.pt`` artifact;
* a registered model ``NAME`` (its latest version) or ``NAME@ALIAS``.

Registered versions point to the (target, seed) run that trained them; the file is that run's
``model/network.pt`` artifact. Downloads are cached under ``$DGMETA_CACHE/models/<run id>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dgmeta.errors import ConfigError, TrackingError

ARTIFACT = "model/network.pt"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[\w.\- ]+$")


def resolve_model(spec: str, tracking_uri: str | None = None) -> Path:
    spec = str(spec).strip()
    local = _local_file(spec)
    if local is not None:
        return local
    if spec.startswith("models:/"):
        name, version, alias = _parse_registry_uri(spec)
        return _download(_registered_run(name, version, alias, tracking_uri), tracking_uri, f"registered model {spec}")
    if _RUN_ID.match(spec):
        return _download(spec, tracking_uri, f"run {spec}")
    if _looks_like_path(spec) or not _NAME.match(spec.split("@", 1)[0]):
        raise ConfigError(
            f"model file {spec} does not exist",
            "give a network.pt path, an MLflow run id, or a registered model (NAME, NAME@ALIAS, models:/NAME/VERSION)",
        )
    name, _, alias = spec.partition("@")
    return _download(_registered_run(name, None, alias or None, tracking_uri), tracking_uri, f"registered model {spec}")


def _local_file(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "network.pt", path / ARTIFACT):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"folder {path} holds no network.pt", "point to the network.pt written by `dgmeta run`")
    return None


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.endswith((".pt", ".pth")) or spec.startswith(("~", "."))


def _parse_registry_uri(spec: str) -> tuple[str, str | None, str | None]:
    body = spec[len("models:/") :].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias and "/" not in name:
            return name, None, alias
    elif body.count("/") == 1:
        name, version = body.split("/")
        if name and (version.isdigit() or version == "latest"):
            return name, None if version == "latest" else version, None
    raise ConfigError(f"cannot read registered model URI {spec!r}", "write models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest")


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _registered_run(name: str, version: str | None, alias: str | None, tracking_uri: str | None) -> str:
    """The run id behind a registered model version."""
    client = _client(tracking_uri)
    what = f"{name}@{alias}" if alias else f"{name} version {version}" if version else name
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version:
            mv = client.get_model_version(name, version)
        else:
            quoted = name.replace("'", "\\'")
            versions = list(client.search_model_versions(f"name='{quoted}'"))
            if not versions:
                raise ConfigError(
                    f"MODEL {name!r} is not a file, an MLflow run id or a registered model",
                    "give a network.pt path, a run id, or a registered model (NAME, NAME@ALIAS, models:/NAME/VERSION)",
                )
            mv = max(versions, key=lambda v: int(v.version))
    except Exception as exc:
        _reraise(exc, f"no registered model {what!r} in the tracking store", "check the name with `mlflow models` / the MLflow UI, or give a run id or a network.pt path")
    run_id = mv.run_id or _run_from_source(str(mv.source or ""))
    if not run_id:
        raise ConfigError(f"registered model {what!r} is not linked to a run", "give the run id or the network.pt path instead")
    return run_id


def _run_from_source(source: str) -> str | None:
    match = re.match(r"^runs:/([0-9a-f]{32})(/|$)", source)
    return match.group(1) if match else None


def _download(run_id: str, tracking_uri: str | None, what: str) -> Path:
    import mlflow

    client = _client(tracking_uri)
    try:
        client.get_run(run_id)
    except Exception as exc:
        _reraise(exc, f"no MLflow run {run_id} in the tracking store", "check the run id (or --tracking-uri), or give a network.pt path")
    destination = _cache_root() / "models" / run_id
    cached = destination / ARTIFACT
    if cached.is_file():
        return cached
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=ARTIFACT, dst_path=str(destination), tracking_uri=tracking_uri
        )
    except Exception as exc:
        _reraise(exc, f"{what} has no artifact {ARTIFACT}", "pick a (target, seed) child run of `dgmeta run`, which saves the network there")
    return Path(path)


def _cache_root() -> Path:
    return Path(os.environ.get("DGMETA_CACHE") or Path.home() / ".cache" / "dgmeta")


def _reraise(exc: Exception, missing: str, hint: str):
    """MLflow "does not exist" -> ConfigError; anything else from the store -> TrackingError."""
    if isinstance(exc, (ConfigError, TrackingError)):
        raise exc
    code = getattr(exc, "error_code", "")
    if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
        raise ConfigError(missing, hint) from None
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    raise TrackingError(f"MLflow tracking store failed: {first_line}", "check --tracking-uri / MLFLOW_TRACKING_URI") from None
