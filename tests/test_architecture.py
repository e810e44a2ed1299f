"""The house's rules (issue #11), checked on the source so that `make test` fails when one is broken.

* Imports flow down the layers: train.core < train.sampling | train.world | train.merging < rewards < train.eval |
  train.sft < train.distill | train.dual_system | train.rl. import-linter checks it with the contracts in
  pyproject.toml ([tool.importlinter]); :func:`test_import_contracts_are_kept` runs it.
* Recipes and scripts are programs: nothing imports them, and they import no other program.
* No ``sys.path`` edits anywhere; no function-local imports of project modules in the library (a local import is for
  an optional or heavy third-party package only); recipes stay short (under 250 lines: the work is in the library).
* One think format per run: no public function, method or dataclass field of the library defaults to a think tag or
  a ThinkFormat, so a caller that forgets the format gets an error instead of another model's tags.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("train", "rewards")  # the project's packages (pyproject's [tool.setuptools.packages.find])
RECIPES = sorted((ROOT / "recipes").glob("*.py"))
SCRIPTS = sorted((ROOT / "scripts").rglob("*.py"))
PROGRAMS = RECIPES + SCRIPTS
MAX_RECIPE_LINES = 250

# The think tags of the models fastslow supports, and the names the library gives them.
THINK_TAGS = {"<think>", "</think>", "[unused16]", "[unused17]"}
THINK_NAMES = {
    "DEFAULT_THINK_START",
    "DEFAULT_THINK_END",
    "PANGU_THINK_START",
    "PANGU_THINK_END",
    "QWEN3_THINK",
    "PANGU_THINK",
}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def library_files() -> list[Path]:
    return sorted(p for pkg in LIBRARY for p in (ROOT / pkg).rglob("*.py"))


def repo_files() -> list[Path]:
    """Every .py file of the repository (not the venv, build outputs or caches)."""
    skip = {".venv", "venv", ".git", "outputs", "runs", "build", "__pycache__", ".pytest_cache", ".hypothesis"}
    return sorted(
        p for p in ROOT.rglob("*.py") if not any(part in skip or part.endswith(".egg-info") for part in p.parts)
    )


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(tree: ast.AST) -> Iterator[tuple[ast.stmt, str]]:
    """(node, absolute module name) of every import in ``tree``; relative imports give ``"."``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node, "." if node.level else node.module or ""


# ------------------------------------------------------------------------------------------------------ layers


def import_linter_config() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the venv's Python
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_import_contracts_are_kept():
    """`lint-imports` (pyproject's [tool.importlinter]) passes: imports flow down the layers, siblings are independent.

    Run it yourself for the full report: ``.venv/bin/lint-imports``.
    """
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert "No module named 'importlinter'" not in proc.stderr, "install the dev extra: pip install -e '.[dev]'"
    assert proc.returncode == 0, f"import contracts broken:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"


def test_every_part_of_the_library_has_a_layer():
    """A new package or module under train/ gets a place in the layers contract (else nothing checks its imports)."""
    layers = next(c for c in import_linter_config()["contracts"] if c["type"] == "layers")["layers"]
    named = {name.strip().strip("()") for layer in layers for name in layer.split("|")}
    parts = {f"train.{p.stem}" for p in (ROOT / "train").iterdir() if p.suffix == ".py" and p.stem != "__init__"}
    parts |= {f"train.{p.name}" for p in (ROOT / "train").iterdir() if (p / "__init__.py").is_file()}
    assert parts | {"rewards"} <= named, f"not in the layers contract: {sorted(parts - named)}"


def test_train_package_init_imports_nothing():
    """Importing train.core runs train/__init__.py first: an import there would make core depend on a stage."""
    imports = [name for _, name in imported_modules(parse(ROOT / "train" / "__init__.py")) if name != "__future__"]
    assert not imports, f"train/__init__.py imports {imports}"


# ---------------------------------------------------------------------------------------------------- programs


def program_names() -> set[str]:
    return {p.stem for p in PROGRAMS}


def test_no_program_shadows_a_package():
    """`python scripts/x/y.py` puts scripts/x/ first on sys.path: a program named like a package hides it from its
    siblings (scripts/bench/rewards.py would make `import rewards` in scripts/bench/ load the bench)."""
    shadowing = [rel(p) for p in PROGRAMS if p.stem in LIBRARY or p.stem in sys.stdlib_module_names]
    assert not shadowing, f"rename these programs, they shadow a package: {shadowing}"


@pytest.mark.parametrize("program", PROGRAMS, ids=rel)
def test_programs_import_no_other_program(program: Path):
    """A recipe or script imports the library, never another recipe or script (move shared code into the library)."""
    names = program_names() - set(LIBRARY)  # a program named like a package is test_no_program_shadows_a_package's
    bad = []
    for node, module in imported_modules(parse(program)):
        top = module.split(".")[0]
        if top in names or top in ("recipes", "scripts") or module == ".":
            bad.append(f"line {node.lineno}: {module}")
    assert not bad, f"{rel(program)} imports another program: {bad}"


def test_library_imports_no_program():
    bad = []
    for path in library_files():
        for node, module in imported_modules(parse(path)):
            top = module.split(".")[0]
            if top in ("recipes", "scripts", "tests", "conftest") or top in program_names() - set(LIBRARY):
                bad.append(f"{rel(path)}:{node.lineno}: {module}")
    assert not bad, f"the library imports programs: {bad}"


@pytest.mark.parametrize("recipe", RECIPES, ids=rel)
def test_recipes_are_short(recipe: Path):
    """A recipe is a top-to-bottom script (setup, train, save); the reusable parts live in the library."""
    lines = len(recipe.read_text(encoding="utf-8").splitlines())
    assert lines < MAX_RECIPE_LINES, f"{rel(recipe)} has {lines} lines; move its machinery into train/"


# ----------------------------------------------------------------------------------------------------- imports


def sys_path_uses(tree: ast.AST) -> Iterator[int]:
    """Lines that touch ``sys.path`` (or ``site.addsitedir``, or set PYTHONPATH)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name):
            if node.value.id == "sys":
                yield node.lineno
        elif isinstance(node, ast.Attribute) and node.attr == "addsitedir":
            yield node.lineno
        elif isinstance(node, ast.Constant) and node.value == "PYTHONPATH":
            yield node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            yield node.lineno


def test_no_sys_path_edits():
    """The project is installed (pip install -e .): programs and tests import it as installed, never by editing the
    import path (tests load a program with conftest.load_script, benches run one with train.core.cli.run_script)."""
    files = [p for p in repo_files() if p != Path(__file__).resolve()]  # this file names what it looks for
    bad = [f"{rel(p)}:{line}" for p in files for line in sys_path_uses(parse(p))]
    assert not bad, f"sys.path edits: {bad}"


def function_local_imports(tree: ast.AST) -> Iterator[tuple[ast.stmt, str]]:
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in fn.body:
                yield from imported_modules(stmt)


def test_no_function_local_imports_of_the_project():
    """Project modules are imported at the top of a module: a local import hides a dependency from import-linter
    and dodges a cycle that the layers should resolve. Local imports are for optional or heavy third-party packages
    (vllm, matplotlib, ...), which this test does not look at."""
    bad = set()
    for path in library_files():
        for node, module in function_local_imports(parse(path)):
            if module.split(".")[0] in LIBRARY or module == ".":
                bad.add(f"{rel(path)}:{node.lineno}: {module}")
    assert not bad, f"function-local imports of project modules: {sorted(bad)}"


# ------------------------------------------------------------------------------------------------ think format


def module_string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "..."`` assignments, so that an alias of a tag is caught too."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return out


def is_think_default(node: ast.expr | None, constants: dict[str, str]) -> bool:
    """A think tag string, a name the library gives a tag or a format, or a ThinkFormat built on the spot."""
    if node is None:
        return False
    if isinstance(node, ast.Constant):
        return node.value in THINK_TAGS
    if isinstance(node, ast.Name):
        return node.id in THINK_NAMES or constants.get(node.id) in THINK_TAGS
    if isinstance(node, ast.Attribute):
        return node.attr in THINK_NAMES
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == "ThinkFormat":
            return True
        # field(default=<tag>) / field(default_factory=lambda: QWEN3_THINK)
        for kw in node.keywords:
            value = kw.value.body if isinstance(kw.value, ast.Lambda) else kw.value
            if kw.arg in ("default", "default_factory") and is_think_default(value, constants):
                return True
    if isinstance(node, ast.Lambda):
        return is_think_default(node.body, constants)
    return False


def is_public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def public_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level public functions and the public methods of public classes, with their qualified names."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_public(node.name):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and is_public(node.name):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_public(item.name):
                    yield f"{node.name}.{item.name}", item


def is_dataclass(node: ast.ClassDef) -> bool:
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else ""
        if name == "dataclass":
            return True
    return False


def dataclass_fields(tree: ast.Module) -> Iterator[tuple[str, ast.AnnAssign]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and is_dataclass(node):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    yield f"{node.name}.{item.target.id}", item


def test_no_public_default_is_a_think_format():
    """No public function or method of train/ and rewards/ defaults a parameter to a think tag or a ThinkFormat:
    the format comes from the run's tokenizer (ThinkFormat.from_tokenizer) and is passed, never guessed."""
    bad = []
    for path in library_files():
        tree = parse(path)
        constants = module_string_constants(tree)
        for name, fn in public_functions(tree):
            args = fn.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
            pairs += list(zip(args.kwonlyargs, args.kw_defaults))
            bad += [f"{rel(path)}:{fn.lineno} {name}({a.arg}=...)" for a, d in pairs if is_think_default(d, constants)]
    assert not bad, f"think-format defaults: {bad}"


def test_no_dataclass_field_defaults_to_a_think_format():
    """No dataclass field (library or recipe) defaults to a think tag or a ThinkFormat. A recipe's config may carry
    ``think_start``/``think_end`` keys (the user's override, resolved by the tokenizer loader): they default to None,
    which :func:`test_think_keys_of_configs_default_to_none` checks on the classes themselves."""
    bad = []
    for path in library_files() + RECIPES:
        tree = parse(path)
        constants = module_string_constants(tree)
        fields = dataclass_fields(tree)
        bad += [f"{rel(path)}:{f.lineno} {name}" for name, f in fields if is_think_default(f.value, constants)]
    assert not bad, f"dataclass fields defaulting to a think format: {bad}"


@pytest.mark.parametrize("recipe", RECIPES, ids=rel)
def test_think_keys_of_configs_default_to_none(recipe: Path):
    """The config dataclasses of a recipe (its ARG_CLASSES) leave the think format to the tokenizer by default."""
    module = load_script(rel(recipe))
    for cls in getattr(module, "ARG_CLASSES", ()):
        for f in dataclasses.fields(cls):
            if f.name in ("think_start", "think_end"):
                assert f.default is None, f"{cls.__name__}.{f.name} defaults to {f.default!r}, not None"
