"""docker-compose.yml stays in step with the package: every Floodgate service runs a real
subcommand of the `floodgate` entry point, with flags that subcommand accepts."""
from pathlib import Path

import pytest
import yaml

from floodgate.cli import build_parser

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_kafka_is_the_official_kraft_image() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


@pytest.mark.parametrize("name", [n for n, s in yaml.safe_load(COMPOSE.read_text())["services"].items()
                                  if "command" in s])
def test_service_command_is_a_real_entry_point(name: str) -> None:
    command = _services()[name]["command"]
    assert command[0] == "floodgate", f"{name} should run the floodgate entry point"
    parser = build_parser()
    args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown subcommand or flag
    assert callable(args.func)


def test_every_floodgate_service_reaches_kafka_or_is_the_simulator() -> None:
    for name, svc in _services().items():
        if name in ("kafka", "simulator"):
            continue
        assert svc["environment"]["FLOODGATE_KAFKA_BOOTSTRAP"].startswith("kafka:")
