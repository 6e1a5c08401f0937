"""The routing file's planning figures that the running system uses too."""
from __future__ import annotations

import pytest

from floodgate.errors import ConfigError
from floodgate.provider_config import dev_setup, from_dict


def table(routes: dict[str, list[dict[str, object]]]) -> dict[str, object]:
    sim = {"kind": "simulator", "concurrency_limit": 5,
           "connection": {"base_url": "http://127.0.0.1:9", "api_key": "k", "webhook_secret": "s" * 32}}
    return {"providers": {"kling": sim, "wan": sim, "runway": sim}, "routes": routes}


def test_each_provider_gets_the_mean_render_time_its_routes_give() -> None:
    setup = from_dict(table({
        "kling-2.1": [{"provider": "kling", "render_time": {"kind": "uniform", "min": 30, "max": 180}},
                      {"provider": "wan", "render_time": 60}],
        "kling-2.5": [{"provider": "kling", "render_time": 45}],
        "wan-2.6": [{"provider": "wan"}, {"provider": "runway"}],
    }))
    # kling: the mean of 105 s (uniform 30-180) and 45 s; wan: 60 s; runway: none given
    assert setup.render_times == {"kling": 75.0, "wan": 60.0}


def test_a_bad_render_time_names_its_route() -> None:
    with pytest.raises(ConfigError, match=r"routes\.kling-2\.1\[0\]\.render_time"):
        from_dict(table({"kling-2.1": [{"provider": "kling", "render_time": {"kind": "gamma"}}]}))


def test_the_dev_table_gives_none() -> None:
    assert dict(dev_setup("http://127.0.0.1:9").render_times) == {}
