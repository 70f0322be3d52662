"""The top-level deployment files parse and carry what Ray's tools require."""

import yaml

from conftest import REPO


def test_cluster_yaml_has_launcher_keys():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_serve_config_parses_and_its_args_fit_the_builder():
    from ray.serve.schema import ServeDeploySchema

    from ray_emer.config import from_dict
    from ray_emer.serve.app import ServeArgs

    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(cfg)  # what `serve deploy` checks
    assert cfg["http_options"]["port"] == 8000
    app = cfg["applications"][0]
    assert app["import_path"] == "ray_emer.serve.app:build_app"
    args = from_dict(ServeArgs, app["args"])  # unknown keys would fail here, as in the builder
    assert args.auth and args.request_timeout_s < cfg["http_options"]["request_timeout_s"]
    names = {d["name"]: d for d in app["deployments"]}
    assert set(names) == {"Ingress", "Decoder", "Model"}
    for d in names.values():  # bounded queues; a short burst can scale (defaults would never scale)
        assert d["max_queued_requests"] > 0 and d["autoscaling_config"]["max_replicas"] >= 2
