"""Config and input models: bad values give one line naming the field."""

from pathlib import Path

import pytest

from agents.config import RecoveryMode, load_settings
from agents.errors import UsageError
from agents.models import Task


def test_defaults_match_the_design() -> None:
    s = load_settings()
    assert (s.pool.budget_mib, s.pool.watermark, s.pool.slots_per_gpu) == (8192, 0.85, 12)
    assert s.health.weights.as_dict() == {
        "coherence": 0.25, "completeness": 0.20, "latency": 0.15, "memory": 0.25, "consistency": 0.15,
    }


def test_yaml_and_toml_files_and_overrides(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("pool:\n  slots_per_gpu: 4\nrecovery:\n  mode: naive\n")
    t = tmp_path / "c.toml"
    t.write_text("[pool]\nslots_per_gpu = 6\n")
    assert load_settings(y).recovery.mode is RecoveryMode.NAIVE
    assert load_settings(t).pool.slots_per_gpu == 6
    assert load_settings(y, {"pool": {"slots_per_gpu": 3}}).pool.slots_per_gpu == 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("pool:\n  slots: 4\n", "pool.slots: Extra inputs are not permitted"),
        ("health:\n  weights:\n    coherence: 0.9\n", "health.weights: health weights must sum to 1"),
        ("pool:\n  watermark: 2\n", "pool.watermark"),
        ("pool: [1, 2\n", "not valid yaml"),
        ("- 1\n", "top level must be a mapping"),
        ("engine:\n  kind: scripted\npool:\n  budget_mib: 100\n", "exceeds budget_mib x watermark"),
        # a store location the store cannot use, refused at load
        ("pool:\n  checkpoint_dir: ftp://host/x\n",
         "pool.checkpoint_dir: ftp://host/x: storage scheme 'ftp' is not supported"),
        ("pool:\n  checkpoint_dir: s3://\n", "pool.checkpoint_dir: s3://: no bucket"),
        ("pool:\n  checkpoint_dir: file://otherhost/x\n",
         "pool.checkpoint_dir: file://otherhost/x: a file:// URI names"),
        ("pool:\n  checkpoint_dir: s3:/bucket/x\n",
         "pool.checkpoint_dir: s3:/bucket/x: a URI made into a Path"),
        ("pool:\n  checkpoint_dir: ' '\n", "pool.checkpoint_dir: the store location is empty"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_settings(path)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("pool:\n  watchdog_s: .inf\n", "pool.watchdog_s: Input should be a finite number"),
        ("pool:\n  watchdog_s: 1e12\n", "pool.watchdog_s: Input should be less than or equal"),
        ("pool:\n  reconcile_s: 1e308\n", "pool.reconcile_s"),
        ("pool:\n  budget_mib: " + "9" * 400 + "\n", "pool.budget_mib"),
        ("pool:\n  agent_kv_mib: " + "9" * 30 + "\n", "pool.agent_kv_mib"),
        ("recovery:\n  backoff_max_s: 1e308\n", "recovery.backoff_max_s"),
        ("recovery:\n  backoff_base_s: .inf\n", "recovery.backoff_base_s"),
        ("recovery:\n  period_s: 1e308\n", "recovery.period_s"),
        ("engine:\n  step_cost_s: .inf\n", "engine.step_cost_s"),
        ("engine:\n  compute_mib: 1e308\n", "engine.compute_mib"),
        ("engine:\n  prompt_cache_mib: " + "9" * 30 + "\n", "engine.prompt_cache_mib"),
        ("engine:\n  seed: " + "9" * 30 + "\n", "engine.seed"),
        ("engine:\n  device:\n    used_for_s: .inf\n", "engine.device.used_for_s"),
    ],
)
def test_values_that_would_break_the_run_are_refused_at_load(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_settings(path)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_selfheal_run_refuses_an_infinite_watchdog_with_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from pool.driver import batch
    from pool.ops.cli import main

    monkeypatch.setattr(batch, "run_batch", lambda opts: pytest.fail("the run started"))

    config = tmp_path / "bad.yaml"
    config.write_text("pool:\n  watchdog_s: .inf\n")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"task_id": "t1", "agent_id": "a", "prompt": "hi"}\n')
    out = tmp_path / "out"
    got = CliRunner().invoke(main, ["run", "--engine", "scripted", "--tasks", str(tasks),
                                    "--config", str(config), "--out", str(out),
                                    "--address", "127.0.0.1:1"])
    assert got.exit_code == 2, got.output
    assert got.stderr.splitlines() == [f"error: config {config}: pool.watchdog_s: Input should be "
                                       "a finite number"]
    assert not out.exists()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No such file"):
        load_settings(tmp_path / "nope.yaml")


def test_task_contract_follows_kind() -> None:
    with pytest.raises(ValueError, match="kind=json needs a schema"):
        Task(task_id="t", agent_id="a", prompt="p", kind="json")
    task = Task.model_validate({"task_id": "t", "agent_id": "a", "prompt": "p", "kind": "json",
                                "schema": {"type": "object"}})
    assert task.json_schema == {"type": "object"}


def test_a_llama_budget_is_checked_against_the_model_not_the_configured_footprints() -> None:
    from pool.control.slots import memory_plan

    tight = load_settings(overrides={"pool": {"budget_mib": 100}})  # llama.cpp is the default
    with pytest.raises(UsageError, match="context 2048 does not fit the budget"):
        memory_plan(tight)
    small = load_settings(overrides={"pool": {"budget_mib": 300}, "engine": {"n_ctx": 1024}})
    plan = memory_plan(small)
    assert plan is not None and plan.kv_bytes_per_token == 23040 and plan.residents == 4


# ---- pool.checkpoint_dir: a path or a store URI ---------------------------------------------


@pytest.mark.parametrize("where", ["checkpoints", "/mnt/selfheal/ckpt", "file:///mnt/selfheal",
                                   "s3://bucket/selfheal", "gs://bucket/x", "gcs://bucket/x"])
def test_checkpoint_dir_is_a_path_or_a_store_uri_kept_as_given(tmp_path: Path, where: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"pool:\n  checkpoint_dir: {where}\n")
    assert load_settings(path).pool.checkpoint_dir == where
    assert load_settings(None, {"pool": {"checkpoint_dir": where}}).pool.checkpoint_dir == where


def test_checkpoint_dir_default_is_unchanged_and_a_path_object_is_taken() -> None:
    from agents.config import PoolConfig

    assert load_settings().pool.checkpoint_dir == "checkpoints"
    assert PoolConfig(checkpoint_dir=Path("/a/b")).checkpoint_dir == "/a/b"  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["x", "/x", "file:///x", "file://localhost/x", "file://h/x",
                                   "s3://b/x", "s3://", "gs://b", "gcs://", "mock:///m", "ftp://h/x",
                                   "HTTP://h/x", "s3:/b/x", "out/gs:/b", " "])
def test_config_takes_exactly_the_store_locations_the_store_resolves(where: str) -> None:
    # agents.config checks the location without importing pool (pool depends on agents): the
    # two must agree, so a config that loads never fails later when the store opens.
    from agents.config import PoolConfig
    from pool.store.location import resolve

    def store_takes() -> bool:
        try:
            resolve(Path(where) if "://" not in where and where.strip() else where)
        except UsageError:
            return False
        return True

    try:
        PoolConfig(checkpoint_dir=where)
        config_takes = True
    except ValueError:
        config_takes = False
    assert config_takes == store_takes(), where
