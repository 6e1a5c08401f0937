from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from floodgate.errors import ConfigError
from floodgate.settings import Settings
from streams import localstate


def _settings(tmp_path: Path, worker: str = "w0") -> Settings:
    return Settings.from_env({}).with_overrides(cache_dir=tmp_path, app_id="app", worker_id=worker)


def test_each_worker_gets_its_own_directory(tmp_path: Path) -> None:
    assert localstate.state_dir(_settings(tmp_path, "w0")) != localstate.state_dir(_settings(tmp_path, "w1"))
    assert localstate.state_dir(_settings(tmp_path, "w0")) == tmp_path / "faust" / "app" / "w0"


def test_tables_of_another_cluster_are_emptied_and_ours_kept(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = localstate.state_dir(settings)
    (path / "v1" / "tables").mkdir(parents=True)
    (path / "v1" / "tables" / "jobs-0.db").write_text("rows of cluster A")
    (path / "cluster-id").write_text("cluster-A\n")
    # A second process so the lock taken here does not collide with our own earlier one.
    code = ("import sys; from pathlib import Path; from floodgate.settings import Settings; "
            "from streams import localstate;"
            "s = Settings.from_env({}).with_overrides(cache_dir=Path(sys.argv[1]), app_id='app', worker_id='w0');"
            "print(localstate.prepare(s, sys.argv[2]))")
    kept = subprocess.run([sys.executable, "-c", code, str(tmp_path), "cluster-A"],
                          capture_output=True, text=True, check=True)
    assert Path(kept.stdout.strip()) == path and (path / "v1" / "tables" / "jobs-0.db").exists()
    subprocess.run([sys.executable, "-c", code, str(tmp_path), "cluster-B"], capture_output=True, text=True, check=True)
    assert not (path / "v1").exists(), "rows built against cluster A must not be trusted on cluster B"
    assert (path / "cluster-id").read_text().strip() == "cluster-B"


def test_a_second_worker_on_the_same_directory_fails_clearly(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "shared")
    localstate.prepare(settings, "c")  # held by this process from now on
    code = ("import sys; from pathlib import Path; from floodgate.settings import Settings; "
            "from streams import localstate;"
            "s = Settings.from_env({}).with_overrides(cache_dir=Path(sys.argv[1]), app_id='app', worker_id='shared');"
            "localstate.prepare(s, 'c')")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert other.returncode != 0
    assert "FLOODGATE_WORKER_ID" in other.stderr and "another worker is using" in other.stderr


def test_worker_id_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLOODGATE_WORKER_ID"):
        Settings.from_env({"FLOODGATE_WORKER_ID": "../etc"})
    with pytest.raises(ConfigError, match="FLOODGATE_TABLE_STORE"):
        Settings.from_env({"FLOODGATE_TABLE_STORE": "redis"})
