from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.errors import ConfigError, ValidationError
from floodgate.routing import (
    ModelRoute,
    ProviderSpec,
    RoutingTable,
    Target,
    chain_for,
    known_models,
    next_target,
)

SORA_RETIRES = datetime(2026, 9, 24, tzinfo=UTC)
BEFORE = SORA_RETIRES - timedelta(seconds=1)
AFTER = SORA_RETIRES + timedelta(days=30)

CONFIG: dict[str, Any] = {
    "providers": {
        "sora": {"kind": "openai", "concurrency_limit": 8, "rate_per_second": 2, "retired_at": "2026-09-24"},
        "kling": {"kind": "kling", "concurrency_limit": 4, "status_rate_per_second": 5},
        "veo": {"kind": "google", "concurrency_limit": 2, "enabled": False},
        "luma": {"kind": "luma", "concurrency_limit": 3},
    },
    "routes": {
        "sora-2": [
            {"provider": "sora", "provider_model": "sora-2"},
            {"provider": "kling", "provider_model": "kling-v2"},
        ],
        "veo-3": [{"provider": "veo"}],
        "veo-3-or-luma": [
            {"provider": "veo", "provider_model": "veo-3"},
            {"provider": "luma", "provider_model": "ray-2"},
        ],
        "sora-only": [{"provider": "sora"}],
    },
}

TABLE = RoutingTable.from_dict(CONFIG)
SORA = Target("sora", "sora-2")
KLING = Target("kling", "kling-v2")
LUMA = Target("luma", "ray-2")


def test_from_dict_reads_every_field() -> None:
    assert TABLE.providers["sora"] == ProviderSpec("sora", "openai", 8, 2.0, SORA_RETIRES, True)
    assert TABLE.providers["veo"].enabled is False
    assert TABLE.providers["kling"].status_rate_per_second == 5.0
    assert TABLE.providers["sora"].status_rate_per_second is None  # the connector's own, if it has one
    assert TABLE.routes["veo-3"] == ModelRoute("veo-3", (Target("veo", "veo-3"),))  # provider_model defaults


@pytest.mark.parametrize(
    ("model", "now", "chain"),
    [
        ("sora-2", BEFORE, (SORA, KLING)),
        ("sora-2", SORA_RETIRES, (KLING,)),  # retirement takes effect at the instant, not after it
        ("sora-2", AFTER, (KLING,)),
        ("veo-3-or-luma", BEFORE, (LUMA,)),  # disabled provider skipped
        ("veo-3-or-luma", AFTER, (LUMA,)),
    ],
)
def test_chain_for(model: str, now: datetime, chain: tuple[Target, ...]) -> None:
    assert chain_for(TABLE, model, now) == chain


def test_chain_for_accepts_any_timezone() -> None:
    just_before_in_paris = datetime(2026, 9, 24, 1, 59, tzinfo=timezone(timedelta(hours=2)))
    assert chain_for(TABLE, "sora-2", just_before_in_paris) == (SORA, KLING)


@pytest.mark.parametrize(
    ("model", "tried", "now", "expected"),
    [
        ("sora-2", [], BEFORE, SORA),
        ("sora-2", ["sora"], BEFORE, KLING),
        ("sora-2", ["kling"], BEFORE, SORA),
        ("sora-2", ["sora", "kling"], BEFORE, None),
        ("sora-2", [], AFTER, KLING),
        ("sora-2", ["kling"], AFTER, None),
        ("veo-3-or-luma", [], BEFORE, LUMA),
    ],
)
def test_next_target(model: str, tried: list[str], now: datetime, expected: Target | None) -> None:
    assert next_target(TABLE, model, tried, now) == expected


def test_unknown_model_lists_the_models_available_now() -> None:
    with pytest.raises(ValidationError) as info:
        chain_for(TABLE, "sora-3", AFTER)
    [problem] = info.value.problems
    assert problem.field == "model"
    assert problem.message == "unknown model 'sora-3'; known: sora-2, veo-3-or-luma"


@pytest.mark.parametrize(
    ("model", "now", "why"),
    [
        ("veo-3", BEFORE, "veo (disabled)"),
        ("sora-only", AFTER, "sora (retired 2026-09-24T00:00:00+00:00)"),
    ],
)
def test_model_whose_providers_are_all_gone_is_rejected(model: str, now: datetime, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        next_target(TABLE, model, [], now)
    [problem] = info.value.problems
    assert problem.field == "model"
    assert "every provider for it is retired or disabled" in problem.message
    assert why in problem.message


def test_known_models_follow_the_clock() -> None:
    assert known_models(TABLE, BEFORE) == ("sora-2", "sora-only", "veo-3-or-luma")
    assert known_models(TABLE, AFTER) == ("sora-2", "veo-3-or-luma")


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        chain_for(TABLE, "sora-2", datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "retired_at",
    ["2026-09-24", "2026-09-24T00:00:00", "2026-09-24T02:00:00+02:00", date(2026, 9, 24), SORA_RETIRES],
)
def test_retired_at_forms(retired_at: Any) -> None:
    cfg = copy.deepcopy(CONFIG)
    cfg["providers"]["sora"]["retired_at"] = retired_at
    assert RoutingTable.from_dict(cfg).providers["sora"].retired_at == SORA_RETIRES


def _with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(CONFIG)
    node: Any = cfg
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "at_fault"),
    [
        (("providers", "kling", "concurrency_limit"), 0, "providers.kling.concurrency_limit"),
        (("providers", "kling", "concurrency_limit"), -3, "providers.kling.concurrency_limit"),
        (("providers", "kling", "concurrency_limit"), 2.5, "providers.kling.concurrency_limit"),
        (("providers", "kling", "concurrency_limit"), True, "providers.kling.concurrency_limit"),
        (("providers", "kling", "concurrency_limit"), _DELETE, "providers.kling.concurrency_limit"),
        (("providers", "kling", "rate_per_second"), 0, "providers.kling.rate_per_second"),
        (("providers", "kling", "rate_per_second"), "fast", "providers.kling.rate_per_second"),
        (("providers", "kling", "status_rate_per_second"), 0, "providers.kling.status_rate_per_second"),
        (("providers", "kling", "status_rate_per_second"), True, "providers.kling.status_rate_per_second"),
        (("providers", "kling", "status_rate_per_second"), 1e400, "providers.kling.status_rate_per_second"),
        (("providers", "kling", "kind"), "", "providers.kling.kind"),
        (("providers", "kling", "enabled"), "yes", "providers.kling.enabled"),
        (("providers", "kling", "retired_at"), "next tuesday", "providers.kling.retired_at"),
        (("providers", "kling", "concurency_limit"), 4, "providers.kling.concurency_limit"),
        (("providers", "kling"), "kling", "providers.kling"),
        (("routes", "sora-2", 1, "provider"), "klingg", "routes.sora-2[1].provider"),
        (("routes", "sora-2", 1, "provider"), "sora", "routes.sora-2[1].provider"),
        (("routes", "sora-2", 0, "provider_model"), "", "routes.sora-2[0].provider_model"),
        (("routes", "sora-2", 0, "weight"), 3, "routes.sora-2[0].weight"),
        (("routes", "sora-2"), [], "routes.sora-2"),
        (("routes", "sora-2"), "sora", "routes.sora-2"),
        (("routes",), _DELETE, "routes"),
        (("providers",), [], "providers"),
        (("extra",), {}, "extra"),
    ],
)
def test_config_errors_name_the_path_at_fault(path: tuple[str | int, ...], value: Any, at_fault: str) -> None:
    with pytest.raises(ConfigError) as info:
        RoutingTable.from_dict(_with(path, value))
    assert str(info.value).startswith(f"{at_fault}:"), str(info.value)


def test_unknown_provider_error_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'klingg'; known: kling, luma, sora, veo"):
        RoutingTable.from_dict(_with(("routes", "sora-2", 1, "provider"), "klingg"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency_limit": 0},
        {"rate_per_second": -1.0},
        {"status_rate_per_second": 0.0},
        {"retired_at": datetime(2026, 9, 24)},
        {"kind": ""},
    ],
)
def test_provider_spec_validates_itself(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"name": "p", "kind": "k", "concurrency_limit": 1, **kwargs}
    with pytest.raises(ConfigError):
        ProviderSpec(**args)


def test_table_built_directly_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"routes.m\[0\].provider: unknown provider 'ghost'"):
        RoutingTable({}, {"m": ModelRoute("m", (Target("ghost", "g"),))})


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TABLE.providers["evil"] = TABLE.providers["sora"]  # type: ignore[index]


@given(
    enabled=st.lists(st.booleans(), min_size=4, max_size=4),
    retire_offsets=st.lists(st.none() | st.integers(-100, 100), min_size=4, max_size=4),
    tried=st.sets(st.sampled_from(["a", "b", "c", "d"])),
)
def test_next_target_walks_the_available_chain_in_order(
    enabled: list[bool], retire_offsets: list[int | None], tried: set[str]
) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    names = ["a", "b", "c", "d"]
    providers = {
        n: ProviderSpec(n, "k", 1, None, None if off is None else now + timedelta(seconds=off), on)
        for n, on, off in zip(names, enabled, retire_offsets, strict=True)
    }
    table = RoutingTable(providers, {"m": ModelRoute("m", tuple(Target(n, n.upper()) for n in names))})
    available = [n for n in names if providers[n].available(now)]
    if not available:
        with pytest.raises(ValidationError):
            next_target(table, "m", list(tried), now)
        return
    assert [t.provider for t in chain_for(table, "m", now)] == available
    remaining = [n for n in available if n not in tried]
    got = next_target(table, "m", list(tried), now)
    assert got == (Target(remaining[0], remaining[0].upper()) if remaining else None)
