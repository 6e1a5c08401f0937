from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.errors import ValidationError
from floodgate.validation import NormalizedRequest, RequestLimits, request_hash, validate_job_request

MODELS = frozenset({"gen-3", "sim-fast"})
LIMITS = RequestLimits()

VALID: dict[str, Any] = {
    "model": "gen-3",
    "input": {"prompt": "a cat surfing", "image_url": "https://img.example/cat.png", "params": {"seconds": "5"}},
    "user_id": "user.1@acme:eu-1",
    "webhook_url": "https://hooks.example/fg",
    "metadata": {"order": "42"},
}


def validate(payload: Any, limits: RequestLimits = LIMITS) -> NormalizedRequest:
    return validate_job_request(payload, known_models=MODELS, limits=limits)


def problems_of(payload: Any, limits: RequestLimits = LIMITS) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        validate(payload, limits)
    return {p.field: p.message for p in info.value.problems}


def changed(path: str, value: Any) -> dict[str, Any]:
    """VALID with one dotted path set (or removed, for the sentinel DELETE)."""
    body = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return body


DELETE = object()


def test_valid_request_is_normalized() -> None:
    assert validate(VALID) == NormalizedRequest(
        model="gen-3",
        prompt="a cat surfing",
        image_url="https://img.example/cat.png",
        params={"seconds": "5"},
        user_id="user.1@acme:eu-1",
        webhook_url="https://hooks.example/fg",
        metadata={"order": "42"},
    )


def test_minimal_request_fills_optional_parts() -> None:
    result = validate({"model": "sim-fast", "input": {"prompt": "p"}, "user_id": "u"})
    assert (result.image_url, result.params, result.webhook_url, result.metadata) == (None, {}, None, {})


@pytest.mark.parametrize("path", ["input.image_url", "input.params", "webhook_url", "metadata"])
def test_null_optional_fields_count_as_absent(path: str) -> None:
    validate(changed(path, None))


@pytest.mark.parametrize("body", [[], "x", None, 3])
def test_body_must_be_object(body: Any) -> None:
    assert problems_of(body) == {"body": "must be a JSON object"}


# One case per rule: (path, value, the message it must produce). Only that field may fail.
RULES = [
    ("model", DELETE, "required"),
    ("model", 3, "must be a string"),
    ("model", "gen-4", "unknown model; expected one of: gen-3, sim-fast"),
    ("input", DELETE, "required"),
    ("input", "a cat", "must be an object"),
    ("input.prompt", DELETE, "required"),
    ("input.prompt", ["a"], "must be a string"),
    ("input.prompt", "", "must not be empty"),
    ("input.prompt", " \n\t", "must not be empty"),
    ("input.prompt", "x" * 4001, "must be at most 4000 characters"),
    ("input.image_url", "ftp://img.example/a.png", "must be an http or https URL"),
    ("input.image_url", 5, "must be a string"),
    ("input.params", "seconds=5", "must be an object"),
    ("input.params", {"seconds": 5}, None),  # reported at input.params.seconds, checked below
    ("input.seed", 1, "unknown field"),
    ("user_id", DELETE, "required"),
    ("user_id", 17, "must be a string"),
    ("user_id", "", "must be non-empty and use only A-Z a-z 0-9 . _ : @ -"),
    ("user_id", "bob smith", "must be non-empty and use only A-Z a-z 0-9 . _ : @ -"),
    ("user_id", "bébé", "must be non-empty and use only A-Z a-z 0-9 . _ : @ -"),
    ("user_id", "u\n", "must be non-empty and use only A-Z a-z 0-9 . _ : @ -"),
    ("user_id", "u" * 129, "must be at most 128 characters"),
    ("webhook_url", "javascript:alert(1)", "must be an http or https URL"),
    ("webhook_url", "https://user:pw@hooks.example/", "must not contain credentials"),
    ("webhook_url", "http://169.254.169.254/latest", "must not point to a private or reserved address"),
    ("webhook_url", "http://localhost./hook", "must not point to a private or reserved address"),
    ("input.image_url", "http://169.254.169.254/latest/meta-data", "must not point to a private or reserved address"),
    ("input.image_url", "http://[::ffff:10.0.0.1]/a.png", "must not point to a private or reserved address"),
    ("input.image_url", "http://0x7f.0.0.1/a.png", "has an invalid host"),
    # Segmented digits (U+1FBF1...): the HTTP client maps them to ASCII ones, so these are IP literals.
    ("webhook_url", "http://127.0.0.\U0001fbf1:8080/hook", "must not point to a private or reserved address"),
    ("webhook_url", "http://169.254.169.\U0001fbf2\U0001fbf5\U0001fbf4/latest",
     "must not point to a private or reserved address"),
    ("input.image_url", "http://169.254.169.\U0001fbf2\U0001fbf5\U0001fbf4/latest/meta-data",
     "must not point to a private or reserved address"),
    ("metadata", ["a"], "must be an object"),
    ("metadata", {f"k{i}": "v" for i in range(17)}, "must have at most 16 entries"),
]


@pytest.mark.parametrize(("path", "value", "message"), RULES, ids=[f"{p}={str(v)[:20]!r}" for p, v, _ in RULES])
def test_rule(path: str, value: Any, message: str | None) -> None:
    problems = problems_of(changed(path, value))
    if message is None:
        assert len(problems) == 1
    else:
        assert problems == {path: message}


@pytest.mark.parametrize(
    ("metadata", "field", "message"),
    [
        ({"k" * 65: "v"}, "metadata." + "k" * 64, "key must be at most 64 characters"),
        ({"": "v"}, "metadata.", "key must be a non-empty string"),
        ({"foo": "v" * 513}, "metadata.foo", "must be at most 512 characters"),
        ({"foo": 1}, "metadata.foo", "must be a string"),
        ({"foo": None}, "metadata.foo", "must be a string"),
    ],
)
def test_metadata_entry_rules(metadata: dict[str, Any], field: str, message: str) -> None:
    assert problems_of(changed("metadata", metadata)) == {field: message}


def test_params_entries_use_dotted_paths() -> None:
    assert problems_of(changed("input.params", {"seconds": 5})) == {"input.params.seconds": "must be a string"}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("input.prompt", "x" * 4000),
        ("user_id", "u" * 128),
        ("metadata", {f"k{i}": "v" * 512 for i in range(16)}),
        ("metadata", {"k" * 64: "v"}),
        ("input.image_url", "http://img.example/a.png"),
    ],
)
def test_limits_are_inclusive(path: str, value: Any) -> None:
    validate(changed(path, value))


def test_unknown_top_level_fields_are_named() -> None:
    assert problems_of({**VALID, "prio": 1, "tenant": "x"}) == {
        "prio": "unknown field",
        "tenant": "unknown field",
    }


def test_priority_and_deadline_are_checked_and_defaulted() -> None:
    assert problems_of({**VALID, "priority": "urgent", "deadline_s": 0}) == {
        "priority": "must be one of: high, standard, low",
        "deadline_s": "must be an integer from 1 to 604800 (seconds)",
    }
    assert problems_of({**VALID, "deadline_s": True})["deadline_s"].startswith("must be an integer")
    plain = validate_job_request(VALID, known_models=MODELS)
    assert (plain.priority, plain.deadline_s) == ("standard", None)
    chosen = validate_job_request({**VALID, "priority": "high", "deadline_s": 90}, known_models=MODELS)
    assert (chosen.priority, chosen.deadline_s) == ("high", 90)


def test_priority_and_deadline_change_the_hash_only_when_set() -> None:
    plain = request_hash(NORMALIZED, "acme")
    assert request_hash(dataclasses.replace(NORMALIZED, priority="standard"), "acme") == plain
    assert request_hash(dataclasses.replace(NORMALIZED, priority="high"), "acme") != plain
    assert request_hash(dataclasses.replace(NORMALIZED, deadline_s=60), "acme") != plain


def test_every_bad_field_is_reported_at_once() -> None:
    body = {
        "model": "nope",
        "input": {"prompt": "", "image_url": "file:///etc/passwd", "params": {"a": 1}, "extra": 1},
        "user_id": "has space",
        "webhook_url": "http://",
        "metadata": {"ok": "v", "bad": 2},
        "colour": "red",
    }
    assert set(problems_of(body)) == {
        "model",
        "input.prompt",
        "input.image_url",
        "input.params.a",
        "input.extra",
        "user_id",
        "webhook_url",
        "metadata.bad",
        "colour",
    }


def test_custom_limits() -> None:
    limits = RequestLimits(max_prompt_chars=10, max_metadata_entries=1)
    problems = problems_of({**changed("input.prompt", "x" * 11), "metadata": {"a": "1", "b": "2"}}, limits)
    assert problems == {"input.prompt": "must be at most 10 characters", "metadata": "must have at most 1 entries"}


def test_many_known_models_are_listed_briefly() -> None:
    models = {f"m{i:02}" for i in range(30)}
    with pytest.raises(ValidationError) as info:
        validate_job_request(changed("model", "x"), known_models=models, limits=LIMITS)
    assert info.value.problems[0].message.endswith("m19, ...")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "model": json_values | st.sampled_from(sorted(MODELS)),
            "input": json_values | st.fixed_dictionaries({"prompt": json_values}),
            "user_id": json_values,
            "webhook_url": json_values,
            "metadata": json_values,
        },
    )
    | json_values
)
def test_any_json_is_accepted_or_rejected_cleanly(payload: Any) -> None:
    try:
        validate(payload)
    except ValidationError as exc:
        assert exc.problems


# --- request_hash ----------------------------------------------------------------

NORMALIZED = NormalizedRequest(
    model="gen-3",
    prompt="a cat surfing ☃",
    image_url=None,
    params={"b": "2", "a": "1"},
    user_id="u1",
    webhook_url=None,
    metadata={},
)


def test_request_hash_is_pinned() -> None:
    # Hashes are stored on the requests topic and compared across deploys:
    # changing the canonical form must bump its format number, not this value.
    assert request_hash(NORMALIZED, "acme") == "1520e972453829c748542c0099073f5c4ac04fff1ce49800b517833d74050632"


def test_request_hash_canonical_form() -> None:
    # The documented canonical form, built with the stdlib so it does not depend on orjson.
    # A request without notify.push hashes as before the field existed.
    fields = {k: v for k, v in dataclasses.asdict(NORMALIZED).items() if k not in ("push", "priority", "deadline_s")}
    canonical = json.dumps(
        {"format": 1, "tenant": "acme", **fields},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert request_hash(NORMALIZED, "acme") == hashlib.sha256(canonical).hexdigest()


def test_request_hash_ignores_key_order() -> None:
    reordered = dataclasses.replace(NORMALIZED, params={"a": "1", "b": "2"})
    assert request_hash(reordered, "acme") == request_hash(NORMALIZED, "acme")


@pytest.mark.parametrize(
    "other",
    [
        {"prompt": "a cat surfing"},
        {"model": "sim-fast"},
        {"params": {"a": "1"}},
        {"user_id": "u2"},
        {"webhook_url": "https://h.example/"},
        {"metadata": {"a": "1"}},
        {"image_url": "https://i.example/x.png"},
    ],
)
def test_request_hash_covers_every_field(other: dict[str, Any]) -> None:
    assert request_hash(dataclasses.replace(NORMALIZED, **other), "acme") != request_hash(NORMALIZED, "acme")


def test_request_hash_depends_on_tenant() -> None:
    assert request_hash(NORMALIZED, "acme") != request_hash(NORMALIZED, "globex")


@pytest.mark.parametrize("url", ["https://bücher.example/fg", "https://straße.example/fg", "https://例え.テスト/fg"])
def test_internationalised_host_names_are_accepted(url: str) -> None:
    body = changed("input.image_url", url)
    body["webhook_url"] = url
    assert (validate(body).image_url, validate(body).webhook_url) == (url, url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/a.png", "http://localhost/a.png", "http://[::1]/a.png"])
def test_private_urls_pass_only_when_allowed(url: str) -> None:
    body = changed("input.image_url", url)
    body["webhook_url"] = url
    assert set(problems_of(body)) == {"input.image_url", "webhook_url"}
    normalized = validate_job_request(body, known_models=MODELS, allow_private=True)
    assert (normalized.image_url, normalized.webhook_url) == (url, url)
