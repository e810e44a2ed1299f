"""Every YAML under recipes/configs/ loads and validates against its recipe's dataclasses, and every key it sets is
read by the code that consumes it."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from train.core.cli import ConfigError, check_config_file, parse_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").rglob("*.yaml"))
RECIPES = {p.stem: p for p in (ROOT / "recipes").glob("*.py")}


def recipe_for(config: Path):
    """The recipe a config belongs to: the longest recipe name its file name starts with."""
    names = [n for n in RECIPES if config.stem == n or config.stem.startswith(n + "_")]
    assert names, f"{config}: no recipe in recipes/ matches this config's name"
    name = max(names, key=len)
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES[name])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve postponed annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_there_are_configs_for_both_scales():
    assert any(p.parent.name == "tiny" for p in CONFIGS)
    assert any(p.parent.name == "embedded-7b" for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_loads_and_validates(config):
    text = config.read_text()
    assert text.startswith("#"), f"{config}: start with a header comment saying how to run it"
    module = recipe_for(config)
    if hasattr(module, "validate_config"):
        module.validate_config(config)
    else:
        assert hasattr(module, "ARG_CLASSES"), f"{module.__file__}: expose ARG_CLASSES or validate_config"
        check_config_file(config, module.ARG_CLASSES)
        parsed = parse_args(module.ARG_CLASSES, ["--config", str(config)])
        assert len(parsed) == len(module.ARG_CLASSES)


def test_unknown_key_suggests_the_right_one(tmp_path):
    from trl import ModelConfig

    from train.core.configs import SFTConfig
    from train.sft import SFTScriptArguments

    bad = tmp_path / "x.yaml"
    bad.write_text("per_device_train_batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"x.yaml: unknown config key 'per_device_train_batchsize'; did you mean"):
        check_config_file(bad, (SFTScriptArguments, SFTConfig, ModelConfig))
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        check_config_file(bad, (SFTScriptArguments,))


# ------------------------------------------------------------------------------------------- every key is read

SOURCES = sorted(p for d in ("train", "rewards", "recipes") for p in (ROOT / d).rglob("*.py"))
OURS = ("train", "rewards", "recipe_", "_script_")  # module names of the project's classes (recipes load as recipe_x)
EXEMPT_STORES = {"__init__", "__post_init__"}  # where a dataclass may normalise its own fields


def bulk_consumers() -> dict[str, type]:
    """Config classes whose every field is handed, by a loop over ``fields()``, to another class that reads it.

    A key of such a class is checked as a key of the receiving class: a field of it, or a key its module reads from
    the mapping it is built from (``data["key"]``, ``data.get("key")``, ``data.pop("key")``).
    """
    from train.merging.config import MergeConfig

    # recipes/merge.py: MergeScriptArguments.merge_config() passes every field to MergeConfig.from_dict.
    return {"MergeScriptArguments": MergeConfig}


@dataclasses.dataclass(frozen=True)
class Access:
    """One attribute access in the source: ``<expr>.attr`` read or assigned."""

    path: Path
    line: int
    attr: str
    classes: tuple[str, ...]  # enclosing classes, outermost first
    functions: tuple[str, ...]  # enclosing functions, outermost first
    keeps_value: bool = False  # a store whose new value reads the old one (``x.k = f(x.k)``): not an overwrite

    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


class AccessIndex(ast.NodeVisitor):
    """Every attribute read and store in the project's library and recipes.

    Reads: ``<expr>.key`` in Load context and ``getattr(<expr>, "key")``. Stores: ``<expr>.key = ...``, ``+=`` and
    ``setattr(<expr>, "key", ...)``.
    """

    def __init__(self) -> None:
        self.reads: list[Access] = []
        self.stores: list[Access] = []
        self.mapping_reads: list[Access] = []  # data["key"], data.get("key"), data.pop("key")
        self._classes: list[str] = []
        self._functions: list[str] = []
        self._path = Path()

    def scan(self, path: Path) -> None:
        self._path = path
        self.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))

    def _access(self, node: ast.AST, attr: str, keeps_value: bool = False) -> Access:
        return Access(self._path, node.lineno, attr, tuple(self._classes), tuple(self._functions), keeps_value)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._classes.append(node.name)
        self.generic_visit(node)
        self._classes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self.reads.append(self._access(node, node.attr))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if (
            isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            self.mapping_reads.append(self._access(node, node.slice.value))
        self.generic_visit(node)

    def _store(self, targets: list[ast.expr], value: ast.expr | None, augmented: bool = False) -> None:
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    keeps = augmented or (value is not None and reads_attr(value, node.attr))
                    self.stores.append(self._access(node, node.attr, keeps))

    def visit_Assign(self, node: ast.Assign) -> None:
        self._store(node.targets, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._store([node.target], node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._store([node.target], node.value, augmented=True)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        literal = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else None
        first = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if name in ("get", "pop") and isinstance(func, ast.Attribute) and isinstance(first, str):
            self.mapping_reads.append(self._access(node, first))
        if name == "getattr" and isinstance(literal, str):
            self.reads.append(self._access(node, literal))
        elif name == "setattr" and isinstance(literal, str):
            value = node.args[2] if len(node.args) > 2 else None
            self.stores.append(self._access(node, literal, value is not None and reads_attr(value, literal)))
        self.generic_visit(node)


def reads_attr(node: ast.AST, attr: str) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == attr for n in ast.walk(node))


@pytest.fixture(scope="module")
def accesses() -> AccessIndex:
    index = AccessIndex()
    for path in SOURCES:
        index.scan(path)
    return index


def is_ours(cls: type) -> bool:
    return cls.__module__.startswith(OURS)


def our_owner(arg_classes: tuple[type, ...], key: str) -> type | None:
    """The project dataclass that declares ``key``, or None when a library's class declares it (trl, transformers
    and peft read their own keys; a key of ours that overrides a library's is read by the library too)."""
    for cls in arg_classes:
        owners = [c for c in cls.__mro__ if key in vars(c).get("__annotations__", {})]
        if owners:
            return owners[0] if all(is_ours(c) for c in owners) else None
    return None


def dead_key_problems(owner: type, key: str, index: AccessIndex) -> list[str]:
    """Why ``owner``'s ``key`` is not consumed: it is never read, or something overwrites it after parsing."""
    consumer = bulk_consumers().get(owner.__name__)
    if consumer is not None:
        if key in {f.name for f in dataclasses.fields(consumer)}:
            return dead_key_problems(consumer, key, index)
        module = Path(sys.modules[consumer.__module__].__file__).resolve()
        if any(a.attr == key and a.path == module for a in index.mapping_reads):
            return []
        return [f"{owner.__name__}.{key} goes to {consumer.__name__}, which neither has the field nor reads the key"]
    family = {c.__name__ for c in owner.__mro__}  # validation in (any base's) __post_init__ is not consumption
    reads = [
        a
        for a in index.reads
        if a.attr == key and not (a.functions[-1:] == ("__post_init__",) and set(a.classes[-1:]) & family)
    ]
    problems = [] if reads else [f"{owner.__name__}.{key} is never read (<expr>.{key} or getattr(..., {key!r}))"]
    for store in index.stores:
        if store.attr == key and not store.keeps_value and not set(store.functions[-1:]) & EXEMPT_STORES:
            problems.append(f"{owner.__name__}.{key} is overwritten at {store.where()}, so the config's value is dead")
    return problems


def yaml_keys(config: Path) -> dict:
    import yaml

    return yaml.safe_load(config.read_text()) or {}


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_config_key_is_read(config, accesses):
    """Every key a YAML sets is consumed: a key that no code reads, or that code overwrites, silently does nothing.

    For each key of a recipe YAML, find the dataclass of the recipe's ARG_CLASSES that declares it. Keys of trl's,
    transformers' and peft's classes are those libraries' to read and are skipped. A key of one of our dataclasses
    must be

    (a) read somewhere in train/, rewards/ or recipes/ -- an attribute load ``<expr>.key`` or
        ``getattr(<expr>, "key")`` -- other than in the dataclass's own ``__post_init__`` (validation is not use);
    (b) never assigned after parsing: no ``<expr>.key = ...`` or ``setattr(<expr>, "key", ...)`` outside an
        ``__init__``/``__post_init__``, unless the new value is computed from the old one
        (``args.mars = merge(args.mars, argv)`` keeps the key alive; ``sel_cfg.selection_seed = seed + t`` kills it).

    A stage that derives a variant config builds a new object (``dataclasses.replace``, a dict of the fields): the
    parsed config keeps its value, and the rule does not look at those. A class whose fields are handed over
    wholesale (``bulk_consumers``) is checked as the class that receives them: the mergekit-format merge YAMLs are
    read by train.merging's MergeConfig. The match is by attribute name, so (a) can pass by coincidence, and (b) can
    fail on another object's attribute of the same name: rename one of the two.
    """
    module = recipe_for(config)
    problems = []
    for key in yaml_keys(config):
        owner = our_owner(module.ARG_CLASSES, key)
        if owner is not None:
            problems += dead_key_problems(owner, key, accesses)
    assert not problems, f"{config.relative_to(ROOT)}:\n" + "\n".join(problems)


@dataclasses.dataclass
class _Options:
    kept: int = 0
    selection_seed: int = 0
    unread: int = 0
    derived: int = 0

    def __post_init__(self) -> None:
        assert self.unread >= 0  # validation: not a use


def test_dead_key_check_catches_an_unread_and_an_overwritten_key(tmp_path):
    code = tmp_path / "stage.py"
    code.write_text(
        "def run(cfg, t):\n"
        "    sel = copy(cfg)\n"
        "    sel.selection_seed = 7 + t  # the configured seed is dropped\n"
        "    sel.derived = sel.derived + t  # computed from the configured value: still used\n"
        "    return cfg.kept, sel.selection_seed\n"
    )
    index = AccessIndex()
    index.scan(code)
    index.scan(Path(__file__))
    assert dead_key_problems(_Options, "kept", index) == []
    assert dead_key_problems(_Options, "derived", index) == []
    assert dead_key_problems(_Options, "unread", index) == ["_Options.unread is never read (<expr>.unread or "
                                                            "getattr(..., 'unread'))"]  # fmt: skip
    assert dead_key_problems(_Options, "selection_seed", index) == [
        f"_Options.selection_seed is overwritten at {code}:3, so the config's value is dead"
    ]


GRPO_CONFIGS = [p for p in CONFIGS if "mars" in yaml_keys(p)]


@pytest.mark.parametrize("config", GRPO_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in GRPO_CONFIGS])
def test_every_mars_key_is_read(config, accesses):
    """The ``mars:`` mapping of a GRPO YAML: its keys are MARSConfig's, its sources' keys SourceConfig's and its
    ``judge`` keys JudgeConfig's, and each is read by the rule of :func:`test_every_config_key_is_read`."""
    from rewards.judge import JudgeConfig
    from rewards.router import MARSConfig, SourceConfig

    mars = yaml_keys(config)["mars"]
    used: list[tuple[type, str]] = [(MARSConfig, key) for key in mars]
    sources = [s for task in (mars.get("tasks") or {}).values() for s in task] + list(mars.get("shared") or [])
    used += [(SourceConfig, key) for source in sources for key in source]
    used += [(JudgeConfig, key) for key in mars.get("judge") or {}]
    problems = []
    for cls, key in dict.fromkeys(used):
        if key not in {f.name for f in dataclasses.fields(cls)}:
            problems.append(f"{key!r} is not a {cls.__name__} field")
        else:
            problems += dead_key_problems(cls, key, accesses)
    assert not problems, f"{config.relative_to(ROOT)}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------- pipeline configs

PIPELINE_CONFIGS = [p for p in CONFIGS if p.stem == "pipeline"]


def pipeline_sections(raw: dict) -> list[tuple[str, dict]]:
    """(section kind, mapping) of a pipeline YAML and of its quick: overrides, for the nested-key checks."""
    out = [("world", raw.get("world") or {}), ("evaluation", raw.get("evaluation") or {})]
    out += [("preflight", raw.get("preflight") or {})]
    out += [("data", v) for v in (raw.get("data") or {}).values() if isinstance(v, dict)]  # data set entries
    out += [("stage", s) for s in raw["stages"]]
    quick = raw.get("quick") or {}
    out += [("world", quick.get("world") or {}), ("evaluation", quick.get("evaluation") or {})]
    out += [("stage", s) for s in (quick.get("stages") or {}).values()]
    return out


def test_there_is_a_pipeline_config_for_both_scales():
    assert {p.parent.name for p in PIPELINE_CONFIGS} >= {"tiny", "embedded-7b"}


@pytest.mark.parametrize("config", PIPELINE_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in PIPELINE_CONFIGS])
def test_every_pipeline_section_key_is_a_read_field(config, accesses):
    """The nested sections (world, evaluation, each stage, the quick: overrides) hold fields of their dataclasses,
    each read by the rule of :func:`test_every_config_key_is_read`."""
    from train.pipeline.config import DataSource, EvalConfig, PreflightConfig, StageConfig, WorldConfig

    classes = {"world": WorldConfig, "evaluation": EvalConfig, "stage": StageConfig, "preflight": PreflightConfig,
               "data": DataSource}  # fmt: skip
    problems = []
    for kind, section in pipeline_sections(yaml_keys(config)):
        cls = classes[kind]
        for key in section:
            if key not in {f.name for f in dataclasses.fields(cls)}:
                problems.append(f"{kind}: {key!r} is not a {cls.__name__} field")
            else:
                problems += dead_key_problems(cls, key, accesses)
    assert not problems, f"{config.relative_to(ROOT)}:\n" + "\n".join(dict.fromkeys(problems))


@pytest.mark.parametrize("config", PIPELINE_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in PIPELINE_CONFIGS])
def test_every_stage_override_and_data_key_is_a_key_of_its_recipe(config):
    """A stage's overrides and data keys go on its recipe's command line: each must be a key of that recipe's
    config classes, and the stage's own YAML must validate (a typo would fail only when the stage starts)."""
    from train.core.cli import known_keys
    from train.pipeline.config import load_pipeline

    problems = []
    for quick in (False, True):
        for stage in load_pipeline(config, quick=quick).stages:
            module = recipe_for(ROOT / stage.config)
            assert Path(module.__file__).stem == stage.recipe, f"{stage.name}: {stage.config} is not a {stage.recipe}"
            known = known_keys(module.ARG_CLASSES)
            for key in [*stage.overrides, *stage.data]:
                if key not in known:
                    problems.append(f"stage {stage.name}: {key!r} is not a key of recipes/{stage.recipe}.py")
    assert not problems, f"{config.relative_to(ROOT)}:\n" + "\n".join(dict.fromkeys(problems))
