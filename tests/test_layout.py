"""The structure the architecture promises, checked on the source: one owner per artifact file name,
no import circle, stages that meet only through artifacts and the library, docs that name the contract."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from eqtools.artifacts import KIND_OWNERS, schema

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "eqtools"

# a stage is the code behind one subcommand; it may import the library and the artifacts, not another stage.
# The export stage is eqtools.export._stage (artifacts in, gates, artifact out); the rest of eqtools.export
# (graph extraction, the ONNX forms, the integer runtime, parity and the deployed measurement) is library,
# which the calibrate stage shares to record a subnet's accuracy as it ships.
STAGES = {
    "train": ("eqtools.train",),
    "calibrate": ("eqtools.calibrate",),
    "sample": ("eqtools.sample",),
    "fit-predictor": ("eqtools.predictor.fit",),
    "search": ("eqtools.search",),
    "export": ("eqtools.export._stage",),
    "report": ("eqtools.report",),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level, including under `if TYPE_CHECKING:` (skipped: not executed)
        nodes = [n for n in nodes if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("eqtools")}


def _stage_of(module: str) -> str | None:
    from eqtools.export import _LAZY  # eqtools.export re-exports lazily: a name stands for the module defining it

    package, _, name = module.rpartition(".")
    if package == "eqtools.export" and name in _LAZY:
        module = _LAZY[name]
    for stage, prefixes in STAGES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return stage
    return None


def test_no_import_circle():
    """Function-level imports count too: a circle closed lazily is still one module needing another's caller."""
    modules = _modules()
    graph = {m: {i for i in _imports(p, m, top_level_only=False) if i in modules and i != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt] if nxt in stack else [node, nxt]
                # a package importing its own submodules (re-exports) is not a circle of modules
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in itertools.pairwise(cycle)):
                    pytest.fail(f"import circle: {' -> '.join(cycle)}")
            elif state.get(nxt) is None:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_stage_imports_another_stage():
    from eqtools.export import _LAZY

    # `import eqtools.export` then `export.export_artifact(...)` reaches the export stage without naming it in
    # an import: the export stage's re-exported names used as attributes count as importing it
    stage_names = sorted(name for name, module in _LAZY.items() if _stage_of(module) == "export")
    through_package = re.compile(r"\bexport\.(" + "|".join(stage_names) + r")\b")
    offenders = []
    for module, path in _modules().items():
        own = _stage_of(module)
        if own is None:
            continue
        for name in _imports(path, module, top_level_only=False):
            other = _stage_of(name)
            if other is not None and other != own:
                offenders.append(f"{module} ({own}) imports {name} ({other})")
        if own != "export":
            offenders += [f"{module} ({own}) uses eqtools.export.{m.group(1)} (export)"
                          for m in through_package.finditer(path.read_text())]
    assert not offenders, "\n".join(offenders)


def _file_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for kind, owner in KIND_OWNERS.items():
        for name in owner.files:
            names.setdefault(name, set()).add(kind)
    return names


def test_each_artifact_file_name_is_spelled_only_by_its_owner():
    # the integer file's standalone loader may be copied out of eqtools, so it spells its own file's
    # name; test_the_standalone_loader_names_the_owned_file keeps the two equal
    owners = {f"eqtools/artifacts/{kind}.py" for kind in KIND_OWNERS} | {"eqtools/export/runtime.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in owners:
            continue
        text = path.read_text()
        for name in _file_names():
            if re.search(rf"""["']{re.escape(name)}["']""", text):
                offenders.append(f"{rel} spells {name!r}")
        if rel != "eqtools/artifacts/_store.py" and re.search(r"""["']manifest\.json["']""", text):
            offenders.append(f"{rel} spells 'manifest.json' (use eqtools.artifacts.MANIFEST)")
    assert not offenders, "\n".join(offenders)


def test_the_standalone_loader_names_the_owned_file():
    from eqtools.artifacts import Export
    from eqtools.export.runtime import FILE_NAME

    assert FILE_NAME == Export.INT


def test_docs_name_every_file_and_typed_field_of_every_kind():
    text = (ROOT / "docs" / "artifacts.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `")}
    for kind, owner in KIND_OWNERS.items():
        row = rows[kind]
        for name in owner.files:
            assert f"`{name}`" in row, (kind, name)
        for section in (owner.Metrics, owner.Extra):
            for field in section.model_fields:
                assert f"`{field}`" in row, (kind, field)
        published = schema(kind)
        assert published["properties"]["kind"]["const"] == kind
