"""The MLflow Model Registry: register an exported checkpoint directory; resolve model URIs to a local one.

A checkpoint can be named three ways besides a path or ``s3://`` URI, each resolved through the tracking store
(``tracking.resolve_uri``: the job's ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the local default):

    models:/NAME/VERSION     a registered version
    models:/NAME@ALIAS       the version an alias points at (pinned once, when resolved)
    runs:/RUN_ID/PATH        a directory among a run's artifacts

``resolve_checkpoint`` downloads it once into ``$RAY_EMER_HOME/models/`` (a version's files never change, so a
second resolution reuses the copy) and returns that directory; every checkpoint loader goes through it
(``model.checkpoint``). ``register_checkpoint`` makes a stage's export a new version of a registered model: the
checkpoint directory among the stage run's artifacts is the version's source, the run is linked, and the stage's
settings and scores are the version's tags. mlflow is imported here only when one of these is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile

from ray_emer import storage
from ray_emer.errors import RayEmerError
from ray_emer.tracking import home, resolve_uri

SCHEMES = ("models:/", "runs:/")
_MODEL = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")
_RUN = re.compile(r"runs:/(?P<run>[0-9A-Za-z_-]+)/(?P<path>.+)")


class RegistryError(RayEmerError, ValueError):
    """A model URI that is malformed or names nothing in the tracking store; a registration that cannot happen."""


def is_model_uri(uri: str) -> bool:
    """``models:/...`` or ``runs:/...`` (resolved through the tracking store), not a path or ``s3://`` URI."""
    return uri.startswith(SCHEMES)


def _quiet_mlflow():
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own progress, not per file
    return mlflow


def _pinned(client, uri: str) -> tuple[str, str]:
    """-> (the URI to download, with an alias pinned to its version; the cache folder below models/)."""
    model, run = _MODEL.fullmatch(uri), _RUN.fullmatch(uri.rstrip("/"))
    if model:
        name, version = model["name"], model["version"]
        if model["alias"]:
            version = client.get_model_version_by_alias(name, model["alias"]).version
        else:
            client.get_model_version(name, version)  # names a missing version before any download
        return f"models:/{name}/{version}", os.path.join(_safe(name), f"{_safe(name)}-v{version}")
    if run:
        path = run["path"].strip("/")
        return f"runs:/{run['run']}/{path}", os.path.join("runs", run["run"], *[_safe(p) for p in path.split("/")])
    raise RegistryError(f"{uri}: not a model URI; expected models:/NAME/VERSION, models:/NAME@ALIAS or "
                        "runs:/RUN_ID/PATH")


def _safe(part: str) -> str:
    return re.sub(r"[^\w.-]", "_", part) or "_"


def _one_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def resolve_checkpoint(uri: str, tracking_uri: str = "") -> str:
    """A local checkpoint directory for ``uri``: a ``models:/`` or ``runs:/`` URI is downloaded once (into
    ``$RAY_EMER_HOME/models/<store>/...``) through ``tracking_uri`` (empty: ``MLFLOW_TRACKING_URI``, else the
    default store); any other ``uri`` (a path, ``s3://``) comes back as it is. A URI that names nothing is a
    ``RegistryError`` of one line."""
    if not is_model_uri(uri):
        return uri
    store = resolve_uri(tracking_uri or None)
    mlflow = _quiet_mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(store)
    try:
        pinned, rel = _pinned(client, uri)
    except MlflowException as exc:
        raise RegistryError(f"{uri}: {_one_line(exc)} (tracking store {store})") from None
    dest = os.path.join(home(), "models", hashlib.sha256(store.encode()).hexdigest()[:10], rel)
    if os.path.isfile(os.path.join(dest, "config.json")):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(dest))
    try:
        try:
            got = mlflow.artifacts.download_artifacts(artifact_uri=pinned, tracking_uri=store, dst_path=tmp)
        except MlflowException as exc:
            raise RegistryError(f"{uri}: {_one_line(exc)} (tracking store {store})") from None
        if not os.path.isfile(os.path.join(got, "config.json")):
            raise RegistryError(f"{uri}: holds no config.json, not an AffectGPT checkpoint directory")
        try:
            os.replace(got, dest)  # atomic: a reader never sees half a download
        except OSError:
            if not os.path.isfile(os.path.join(dest, "config.json")):  # else another process got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _tag(value) -> str:
    return str(value)[:5000]


def register_checkpoint(output: str, name: str, run_id: str | None, tracking_uri: str, tags: dict,
                        description: str = "") -> dict:
    """Register the checkpoint directory ``output`` as a new version of model ``name``, its source the directory
    among run ``run_id``'s artifacts (logged there now when the stage did not already). -> ``{"name", "version",
    "uri": "models:/NAME/VERSION", "run_id", "source"}``."""
    if not name or "/" in name or "@" in name or ":" in name:
        raise RegistryError(f"register: {name!r} is not a model name (no '/', '@' or ':')")
    if not run_id or not tracking_uri:
        raise RegistryError(f"register {name}: the stage has no MLflow run to register from; registering needs "
                            "tracking (tracking.enabled: true)")
    from mlflow.exceptions import MlflowException

    client = _quiet_mlflow().MlflowClient(tracking_uri)
    folder = storage.basename(output.rstrip("/"))
    if not any(f.path == f"{folder}/config.json" for f in client.list_artifacts(run_id, folder)):
        with storage.local_tree(output) as local:
            client.log_artifacts(run_id, str(local), folder)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{folder}"
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise RegistryError(f"register {name}: {_one_line(exc)}") from None
    version = client.create_model_version(name, source, run_id=run_id, description=description or None,
                                          tags={k: _tag(v) for k, v in tags.items() if v is not None})
    return {"name": name, "version": int(version.version), "uri": f"models:/{name}/{version.version}",
            "run_id": run_id, "source": source}
