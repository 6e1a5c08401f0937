"""What may import what (README, "Layers"): every import in the code, checked against the rule.

Layers, lowest first; a module may import from its own layer and the ones below it:

1. core: ``floodgate/*.py`` rules and plumbing (settings, codec, topics, throttle, ...),
   ``floodgate/jobs``, ``schemas``.
2. connectors: ``connectors/`` and ``floodgate/provider_config.py`` (which builds them).
3. services: ``streams/``, ``floodgate/api``, ``floodgate/notify``, ``floodgate/videos``,
   ``floodgate/sdk/``. They do not import each other, except that the API hosts the outgoing
   webhooks and the video copier (api → notify, api → videos).
4. tools: ``floodgate/cli.py``, ``devstack.py``, ``demo.py``, ``broker/``, ``bench/``, ``chaos/``.

Imports inside functions and under ``TYPE_CHECKING`` count too. And no module takes another's
private (``_``-prefixed) names: what is shared is public, in the lowest layer that needs it.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("floodgate", "connectors", "streams", "schemas")

CORE, CONNECTORS, SERVICES, TOOLS = range(4)
LAYER_NAMES = ("core", "connectors", "services", "tools")
# Longest prefix wins; anything else under floodgate/ is core.
PARTS = {
    "floodgate": CORE,
    "schemas": CORE,
    "connectors": CONNECTORS,
    "floodgate.provider_config": CONNECTORS,
    "streams": SERVICES,
    "floodgate.api": SERVICES,
    "floodgate.notify": SERVICES,
    "floodgate.sdk": SERVICES,
    "floodgate.videos": SERVICES,
    "floodgate.cli": TOOLS,
    "floodgate.devstack": TOOLS,
    "floodgate.demo": TOOLS,
    "floodgate.broker": TOOLS,
    "floodgate.bench": TOOLS,
    "floodgate.ops": TOOLS,
    "floodgate.chaos": TOOLS,
}
SERVICES_MAY_SHARE = {("floodgate.api", "floodgate.notify"), ("floodgate.api", "floodgate.videos")}


def part_of(module: str) -> str:
    """The entry of ``PARTS`` that ``module`` belongs to."""
    name = module
    while name not in PARTS:
        name = name.rpartition(".")[0]
        assert name, f"{module} is in no layer"
    return name


def crossing(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None if it may."""
    mine, theirs = part_of(importer), part_of(imported)
    low, high = PARTS[mine], PARTS[theirs]
    if high > low:
        return f"{LAYER_NAMES[low]} ({mine}) imports {LAYER_NAMES[high]} ({theirs})"
    if low == high == SERVICES and mine != theirs and (mine, theirs) not in SERVICES_MAY_SHARE:
        return f"service {mine} imports service {theirs}"
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of our own packages in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            # `from floodgate import codec` imports the module floodgate.codec.
            names = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield node.lineno, name


def violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            for line, imported in imports(path.read_text(), module, path.name == "__init__.py"):
                why = crossing(module, imported)
                if why:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {why}")
    return found


def test_no_import_crosses_a_layer_upwards() -> None:
    assert violations() == []


def test_no_module_takes_a_private_name_from_another() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []


def test_the_check_sees_crossings() -> None:
    assert crossing("floodgate.codec", "streams.topics") == "core (floodgate) imports services (streams)"
    assert crossing("connectors.providers.base", "floodgate.api.view") == (
        "connectors (connectors) imports services (floodgate.api)")
    assert crossing("floodgate.notify.outgoing", "streams.emit") == "service floodgate.notify imports service streams"
    assert crossing("floodgate.notify.outgoing", "floodgate.api.server") is not None
    assert crossing("floodgate.api.server", "floodgate.notify.outgoing") is None
    assert crossing("floodgate.devstack", "floodgate.broker.local") is None
    assert crossing("floodgate.provider_config", "connectors.providers.registry") is None


def test_imports_are_read_wherever_they_stand() -> None:
    source = (
        "from . import base\n"
        "from ..notifiers.webhook import x\n"
        "from floodgate import codec\n"
        "def f():\n"
        "    import streams.worker\n"
        "if TYPE_CHECKING:\n"
        "    from floodgate.api.view import JobView\n"
    )
    found = {name for _, name in imports(source, "connectors.providers.simulator", is_package=False)}
    assert found == {"connectors.providers.base", "connectors.notifiers.webhook", "floodgate.codec",
                     "streams.worker", "floodgate.api.view"}
