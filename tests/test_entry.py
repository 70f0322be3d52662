"""The entry layer, in process: the command table, typed flag values, one error base class with exit codes."""

from __future__ import annotations

import importlib
import inspect
import json

import pytest

from ray_emer import cli
from ray_emer.errors import RayEmerError


def _target(cmd):
    module, name = cmd.target.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("cmd", cli.COMMANDS, ids=lambda c: " ".join(c.path))
def test_every_command_maps_onto_a_library_function_that_takes_its_flags(cmd):
    func = _target(cmd)
    assert not func.__module__.startswith("ray_emer.cli"), "the logic lives in the library, not in the CLI"
    kwargs = {cli._dest(f): None for f in cmd.flags if not f.to and cli._dest(f) not in cli.OUTPUT_ONLY}
    if cmd.config:
        module, name = cmd.config.split(":")
        cfg_cls = getattr(importlib.import_module(module), name)
        inspect.signature(func).bind(cfg_cls(), log=print, **kwargs)  # raises TypeError on a mismatch
        from ray_emer.config import field_type

        for f in cmd.flags:
            if f.to:
                field_type(cfg_cls, f.to)  # every flag sets a real config field
    else:
        inspect.signature(func).bind(**kwargs)
    def value(f):
        return str(f.opts["choices"][0]) if "choices" in f.opts else "1"

    args = [*cmd.path, *[value(f) for f in cmd.flags if not f.names[0].startswith("-")],
            *[a for f in cmd.flags if f.opts.get("required") for a in (f.names[0], value(f))]]
    assert cli.build_parser().parse_args(args)._command is cmd


def _capture(monkeypatch, target: str) -> dict:
    seen = {}
    module, name = target.split(":")

    def fake(cfg, log=None, **kw):
        seen.update(cfg=cfg, kw=kw)
        return {"ok": True}

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return seen


def test_typed_flag_values_are_not_round_tripped_through_yaml(monkeypatch, capsys):
    seen = _capture(monkeypatch, "ray_emer.train.run:run_stage")
    assert cli.main(["train", "--features", "on", "--output", "2024", "--max-steps", "7",
                     "--set", "scaling.use_gpu=true", "--set", "tracking.enabled=off", "--set", "optim.lr=1e-3",
                     "--set", "data.train_split="]) == 0
    cfg = seen["cfg"]
    assert (cfg.features, cfg.output, cfg.max_steps) == ("on", "2024", 7)
    assert cfg.scaling.use_gpu == "true" and cfg.tracking.enabled is False and cfg.optim.lr == 1e-3
    assert cfg.data.train_split == ""
    assert json.loads(capsys.readouterr().out) == {"ok": True}

    seen = _capture(monkeypatch, "ray_emer.data.pipeline:run_extract")
    assert cli.main(["extract", "--input", "in", "--output", "on", "--face-crop", "--set", "use_gpu=true"]) == 0
    assert seen["cfg"].output == "on" and seen["cfg"].use_gpu == "true" and seen["cfg"].media.face_crop is True

    seen = _capture(monkeypatch, "ray_emer.synthetic:synth_job")
    assert cli.main(["synth", "--out", "2024", "--clips", "3", "--coarse"]) == 0
    assert seen["kw"] == {"out": "2024"} and seen["cfg"].clips == 3 and seen["cfg"].coarse is True
    assert cli.main(["synth", "--out", "x"]) == 0 and seen["cfg"].coarse is False  # an absent flag keeps the default

    seen = _capture(monkeypatch, "ray_emer.serve.run:serve_local")
    assert cli.main(["serve", "--checkpoint", "c", "--no-auth", "--port", "9000"]) == 0
    assert seen["cfg"].auth is False and seen["kw"] == {"port": 9000, "host": "127.0.0.1"}


def test_one_error_base_class_caught_once_with_its_exit_code(monkeypatch, capsys, tmp_path):
    from ray_emer.config import ConfigError
    from ray_emer.data.manifest import ManifestError
    from ray_emer.eval.unibench import EvalInputError
    from ray_emer.media import MediaError
    from ray_emer.model.checkpoint import CheckpointError
    from ray_emer.storage import StorageError

    for err in (ConfigError, ManifestError, EvalInputError, CheckpointError, StorageError, MediaError):
        assert issubclass(err, RayEmerError), err
    assert ConfigError("x").exit_code == 2 and MediaError("f", "not_found").exit_code == 1

    # a bad value: exit 2, the command and the key on stderr, nothing on stdout
    assert cli.main(["synth", "--out", str(tmp_path), "--set", "seed=x"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("ray-emer synth: seed: expected int")
    # a missing file to decode: exit 1 (this file is bad), the reason on stderr
    assert cli.main(["decode", str(tmp_path / "none.mp4")]) == 1
    assert "none.mp4: not found" in capsys.readouterr().err
    # a library error raised deep in a flow reaches main with its own code
    assert cli.main(["evaluate", "text", "--predictions", str(tmp_path / "p.csv"), "--labels",
                     str(tmp_path / "l.csv")]) == 2
    assert capsys.readouterr().err.startswith("ray-emer evaluate text: ")
    # a bug is not a user error: it is not swallowed
    monkeypatch.setattr("ray_emer.synthetic.synth_job", lambda cfg, log=None, out="": 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["synth", "--out", "x"])


def test_an_unmarked_test_cannot_start_a_subprocess_or_ray():
    """The fast tier stays fast: conftest fails unmarked tests that start a subprocess or Ray."""
    import subprocess

    import ray

    with pytest.raises(pytest.fail.Exception, match="mark it integration"):
        subprocess.run(["true"])
    if not ray.is_initialized():
        with pytest.raises(pytest.fail.Exception, match="starts Ray: mark it integration"):
            ray.init()


def test_stdout_carries_only_the_result(monkeypatch, capsys):
    """Ray forwards worker and raylet lines to the driver's sys.stdout: while a command runs they go to stderr."""
    import sys

    def chatty(cfg, log=None, out=""):
        print("(raylet) WARNING: 8 PYTHON worker processes have been started")
        return {"manifest": out}

    monkeypatch.setattr("ray_emer.synthetic.synth_job", chatty)
    real = sys.stdout
    assert cli.main(["synth", "--out", "x"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"manifest": "x"} and "(raylet) WARNING" in err
    assert sys.stdout is real  # restored
