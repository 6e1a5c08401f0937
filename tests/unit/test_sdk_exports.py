"""Pins the SDK's public surface: changing it must be a deliberate, reviewed act."""
from __future__ import annotations

import inspect

import floodgate.sdk as sdk

EXPECTED = [
    "AsyncFloodgateClient",
    "BatchDeliveryError",
    "DeliveryError",
    "FloodgateClient",
    "JobSpec",
    "Problem",
    "PushTarget",
    "ValidationError",
]


def test_all_is_pinned() -> None:
    assert sorted(sdk.__all__) == EXPECTED


def test_every_export_exists_and_is_documented() -> None:
    for name in sdk.__all__:
        member = getattr(sdk, name)
        assert inspect.getdoc(member), f"{name} has no docstring"


def test_public_methods_are_documented() -> None:
    for cls in (sdk.FloodgateClient, sdk.AsyncFloodgateClient):
        for name in ("submit", "submit_many", "close"):
            assert inspect.getdoc(getattr(cls, name)), f"{cls.__name__}.{name}"


def test_both_clients_share_the_submit_signature() -> None:
    for name in ("submit", "submit_many"):
        sync = inspect.signature(getattr(sdk.FloodgateClient, name))
        aio = inspect.signature(getattr(sdk.AsyncFloodgateClient, name))
        assert list(sync.parameters) == list(aio.parameters)


def test_sdk_errors_are_floodgate_errors() -> None:
    from floodgate.errors import FloodgateError

    assert issubclass(sdk.DeliveryError, FloodgateError)
    assert issubclass(sdk.BatchDeliveryError, sdk.DeliveryError)


def test_names_the_single_module_offered_still_import() -> None:
    """Before the SDK was a package, ``floodgate.sdk`` also offered the type of the clients'
    ``limits=`` and the error a bad configuration raises: code importing them from here still works."""
    from floodgate.errors import ConfigError
    from floodgate.validation import RequestLimits
    assert sdk.RequestLimits is RequestLimits and sdk.ConfigError is ConfigError


def test_both_clients_log_as_the_sdk() -> None:
    """A filter or level set on the ``floodgate.sdk`` logger applies to both clients' records
    (a logger's own filters do not see records of its children)."""
    from floodgate.sdk import async_client, sync_client
    assert {async_client.log.name, sync_client.log.name} == {"floodgate.sdk"}
