"""The package's layer order, written once, and the check that every import follows it.

A module may import modules of its own layer or of a lower one, never of a higher one: the
query path runs client -> ``query`` -> ``shard`` and comes back by return values. Every module
of the package is parsed with ``ast`` (nothing is imported), so imports inside functions,
under ``TYPE_CHECKING`` and of the form ``from . import x`` count like any other.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aaflow_stream
from aaflow_stream.query import protocol as query_protocol
from aaflow_stream.shard import filters, limits

PACKAGE: Final = "aaflow_stream"
SOURCE_ROOT: Final = Path(aaflow_stream.__file__).parent

# Top to bottom; each layer is a list of modules or packages, named under aaflow_stream.
LAYERS: Final[list[list[str]]] = [
    # entry points and whole-run tools; client.py is narrowed further below (CLIENT_USES)
    ["cli", "access", "soak", "daemon", "pipeline", "ownership", "client"],
    ["runtime"],  # actors, supervisor, launchers, liveness watch
    ["operators"],  # stage operators, the shard job (operators/shard*.py)
    ["ingest", "query"],  # client-facing endpoints: wire protocols, admission, gateway
    ["shard"],  # store, WAL, snapshots, collective rounds, top-k, filters, wake-ups
    # services every stage may use
    ["observe", "channels", "durability", "embedders", "mpi", "text", "synthetic"],
    ["frames", "flow", "plan", "report"],  # pure: wire layout, credit, plan, summaries
    ["protocol", "spec", "schemas", "untrusted", "procs"],  # messages, config, decoding
    ["errors"],
]

# client.py talks to a running graph over its sockets only: never the runtime, operators or
# shards. These (and what lies under them) are all it may import.
CLIENT_USES: Final = (
    "query.protocol",
    "ingest.protocol",
    "channels",
    "protocol",
    "frames",
    "flow",
    "spec",
    "schemas",
    "untrusted",
    "errors",
)

# Upward imports not removed yet, each with what removes it. Only ever shrinks.
KNOWN_UPWARD: Final[dict[tuple[str, str], str]] = {}


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    source: str  # the importing module, without the package prefix ("" for the package)
    target: str  # the imported module (or package), without the package prefix


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _short(dotted: str) -> str:
    return "" if dotted == PACKAGE else dotted.removeprefix(PACKAGE + ".")


def imports_in(
    source: str, module: str, is_package: bool, modules: set[str]
) -> list[tuple[int, str]]:
    """The package modules ``source`` imports, as (line, short name), resolving relative
    imports against ``module``; ``from x import y`` names ``x.y`` when that is a module."""
    here = f"{PACKAGE}.{module}" if module else PACKAGE
    package = here if is_package else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            for alias in node.names:
                child = f"{stem}.{alias.name}"
                found.append((node.lineno, child if _short(child) in modules else stem))
    ours = [
        (line, _short(target))
        for line, target in found
        if target == PACKAGE or target.startswith(PACKAGE + ".")
    ]
    return list(dict.fromkeys(ours))  # one entry per (line, module), in order


def _package_imports() -> list[Import]:
    paths = sorted(SOURCE_ROOT.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    return [
        Import(path, line, _module_name(path), target)
        for path in paths
        for line, target in imports_in(
            path.read_text(encoding="utf-8"),
            _module_name(path),
            path.name == "__init__.py",
            modules,
        )
    ]


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest entry that is ``module`` or holds it; the package's
    own ``__init__`` (which imports nothing) counts as the top."""
    if module == "":
        return 0
    best: tuple[int, int] | None = None  # (length of the entry, layer)
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if (module == entry or module.startswith(entry + ".")) and (
                best is None or len(entry) > best[0]
            ):
                best = (len(entry), index)
    return None if best is None else best[1]


def upward_imports(imports: list[Import]) -> list[Import]:
    """The imports whose target sits in a higher layer than the module importing it."""
    return [
        imp
        for imp in imports
        if (below := layer_of(imp.source)) is not None
        and (above := layer_of(imp.target)) is not None
        and above < below
    ]


def _describe(imp: Import) -> str:
    source_layer, target_layer = layer_of(imp.source), layer_of(imp.target)
    assert source_layer is not None and target_layer is not None
    return (
        f"{imp.path.relative_to(SOURCE_ROOT.parent)}:{imp.line}: {imp.source} "
        f"(layer {source_layer}: {', '.join(LAYERS[source_layer])}) imports {imp.target} "
        f"(layer {target_layer}: {', '.join(LAYERS[target_layer])})"
    )


def test_the_layer_order_names_each_package_once() -> None:
    entries = [entry for layer in LAYERS for entry in layer]
    assert len(entries) == len(set(entries))


def test_every_module_of_the_package_has_a_layer() -> None:
    paths = sorted(SOURCE_ROOT.rglob("*.py"))
    unplaced = [str(path) for path in paths if layer_of(_module_name(path)) is None]
    assert not unplaced, f"add these to a layer in LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        _describe(imp)
        for imp in upward_imports(_package_imports())
        if (imp.source, imp.target) not in KNOWN_UPWARD
    ]
    assert not upward, "imports that run upward (see LAYERS in this file):\n" + "\n".join(upward)


def test_each_known_upward_import_is_still_there_to_remove() -> None:
    present = {(imp.source, imp.target) for imp in upward_imports(_package_imports())}
    gone = [edge for edge in KNOWN_UPWARD if edge not in present]
    assert not gone, f"remove these from KNOWN_UPWARD, they are fixed: {gone}"


def test_the_client_uses_only_the_wire_protocols_and_channels() -> None:
    def allowed(target: str) -> bool:
        return any(target == use or target.startswith(use + ".") for use in CLIENT_USES)

    wrong = [
        f"client.py:{imp.line}: {imp.target}"
        for imp in _package_imports()
        if imp.source == "client" and not allowed(imp.target)
    ]
    assert not wrong, f"client.py may import only {CLIENT_USES}: {wrong}"


def test_the_scanner_sees_relative_function_level_and_from_dot_imports() -> None:
    source = (
        "from . import topk\n"
        "from .. import untrusted\n"
        "from ..query.protocol import MAX_K, QueryFilter\n"
        "import aaflow_stream.errors\n"
        "import numpy\n"
        "def late() -> None:\n"
        "    from ..runtime import procs\n"
    )
    modules = {"shard.topk", "untrusted", "query.protocol", "errors", "runtime", "runtime.procs"}
    found = imports_in(source, "shard.store", False, modules)
    assert found == [
        (1, "shard.topk"),
        (2, "untrusted"),
        (3, "query.protocol"),
        (4, "errors"),
        (7, "runtime.procs"),
    ]


def test_the_names_moved_under_shard_are_still_where_clients_import_them() -> None:
    assert query_protocol.QueryFilter is filters.QueryFilter
    assert query_protocol.MAX_K == limits.MAX_K
    assert query_protocol.MAX_DELETE_IDS == limits.MAX_DELETE_IDS
    assert (query_protocol.MIN_TS_MS, query_protocol.MAX_TS_MS) == (-(2**63), 2**63 - 1)
    assert query_protocol.MAX_REQUEST_BYTES == 4 * 1024 * 1024
    assert query_protocol.MAX_PENDING_QUERIES == 4096
