"""The Databricks Asset Bundle in conf/bundle agrees with the code it deploys: the stages and
their order, the command-line arguments, the configuration overlays and the paths it uploads.
No Databricks CLI or workspace needed; `databricks bundle validate` checks the rest."""

from __future__ import annotations

import ast
import datetime as dt
import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from segmentation.stages import pipeline
from segmentation.stages import outcomes
from segmentation.stages import tiers
from segmentation.cli import STAGES, build_parser
from segmentation.config import TableLocations, load_config
from tests.conftest import CONF_DIR, REPO

BUNDLE = REPO / "conf" / "bundle"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# The tables each stage reads; a task must run after the tasks that write them.
READS = {
    "ingest": [],
    "features": ["transactions"],
    "clv": ["transactions"],
    "cluster": ["customer_features"],
    "churn train": ["transactions"],
    "churn score": ["customer_features"],
    "tiers": list(tiers.INPUTS),
    "outcomes": list(outcomes.INPUTS),
    "report": ["customer_tiers", "treatment_outcomes"],
    "generate": [],
}
WRITES = {
    "ingest": pipeline.OUTPUTS["ingest"],
    "features": pipeline.OUTPUTS["features"],
    "clv": pipeline.OUTPUTS["clv"],
    "cluster": pipeline.OUTPUTS["cluster"],
    "churn train": [],  # a registered model: the champion churn score needs
    "churn score": pipeline.OUTPUTS["churn.score"],
    "tiers": pipeline.OUTPUTS["tiers"],
    "outcomes": pipeline.OUTPUTS["outcomes"],
    "report": [],
    "generate": ["raw_transactions"],
}
REFERENCE = re.compile(r"\$\{([^}]+)\}")
JOB_PARAMETER = re.compile(r"\{\{\s*job\.parameters\.([\w-]+)\s*\}\}")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


ROOT = _load(BUNDLE / "databricks.yml")
RESOURCE_FILES = sorted(p for pattern in ROOT["include"] for p in BUNDLE.glob(pattern))


def _jobs() -> list[tuple[Path, str, dict]]:
    """(folder its relative paths start from, name, definition) of every job, in every target."""
    found = []
    for path in RESOURCE_FILES:
        for name, job in _load(path)["resources"]["jobs"].items():
            found.append((path.parent, name, job))
    for target in ROOT["targets"].values():
        for name, job in ((target.get("resources") or {}).get("jobs") or {}).items():
            found.append((BUNDLE, name, job))
    return found


def _stage(task: dict) -> str:
    """The stage a task runs: its script's name, and churn's action (train or score)."""
    stage = Path(task["spark_python_task"]["python_file"]).stem
    if stage == "churn":
        stage = f"churn {task['spark_python_task']['parameters'][0]}"
    return stage


def _stage_tasks(job: dict) -> dict[str, dict]:
    return {t["task_key"]: t for t in job["tasks"] if "spark_python_task" in t}


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _substitute(text: str, job: dict, **parameters: str) -> str:
    """A task argument as the job run sees it: the workspace copy of the repository stands for
    `${workspace.file_path}` (the sync root is the repository root), variables take their defaults,
    job parameters their defaults unless given."""
    defaults = {p["name"]: p["default"] for p in job.get("parameters", [])}
    text = JOB_PARAMETER.sub(lambda m: {**defaults, **parameters}[m.group(1)], text)
    text = text.replace("${workspace.file_path}", str(REPO))
    return REFERENCE.sub(lambda m: str(ROOT["variables"][m.group(1).removeprefix("var.")]["default"]), text)


def test_dev_and_prod_targets():
    targets = ROOT["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    assert targets["prod"]["mode"] == "production"
    # production mode wants exactly one deployed copy: an explicit root path
    assert targets["prod"]["workspace"]["root_path"].endswith("/.bundle/${bundle.name}/${bundle.target}")
    assert "resources" not in targets["prod"], "demo data and other extras stay out of prod"


def test_the_pipeline_job_has_a_task_per_stage_running_its_script():
    (job,) = [job for _, name, job in _jobs() if name == "segmentation_pipeline"]
    stages = [_stage(task) for task in _stage_tasks(job).values()]
    assert len(stages) == len(set(stages))
    assert {stage.split()[0] for stage in stages} == set(pipeline.STAGES)
    assert [pipeline.STAGES.index(s.split()[0]) for s in stages] == sorted(pipeline.STAGES.index(s.split()[0]) for s in stages)
    for _, _, job in _jobs():
        for task in _stage_tasks(job).values():
            command = Path(task["spark_python_task"]["python_file"]).stem
            assert command in STAGES and command != "run", task["task_key"]
            # the script hands its arguments to the `segmentation <command>` of the same name
            source = (REPO / "jobs" / f"{command}.py").read_text(encoding="utf-8")
            assert f'main(["{command}", *sys.argv[1:]])' in source, command


def test_every_task_runs_after_the_tasks_writing_what_it_reads():
    for _, name, job in _jobs():
        tasks = {t["task_key"]: t for t in job["tasks"]}
        parents = {key: [d["task_key"] for d in task.get("depends_on", [])] for key, task in tasks.items()}
        for key, keys in parents.items():
            assert set(keys) <= set(tasks), f"{name}.{key} depends on an unknown task"

        def ancestors(key: str, seen: tuple[str, ...] = ()) -> set[str]:
            assert key not in seen, f"{name}: dependency cycle through {key}"
            found = set(parents[key])
            for parent in parents[key]:
                found |= ancestors(parent, (*seen, key))
            return found

        stage_tasks = _stage_tasks(job)
        writers = {table: key for key, task in stage_tasks.items() for table in WRITES[_stage(task)]}
        for key, task in stage_tasks.items():
            before = ancestors(key)
            for table in READS[_stage(task)]:
                if table in writers:
                    assert writers[table] in before, f"{name}.{key} reads {table} before {writers[table]} writes it"
            for parent in before & set(stage_tasks):
                assert pipeline.STAGES.index(_stage(stage_tasks[parent]).split()[0]) <= pipeline.STAGES.index(
                    _stage(task).split()[0]
                ), f"{name}: {parent} comes after {key} in the pipeline"


def test_churn_training_is_optional_and_scoring_follows_it():
    (job,) = [job for _, name, job in _jobs() if name == "segmentation_pipeline"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    train, score = tasks["churn_train"], tasks["churn_score"]
    gate = [d for d in train["depends_on"] if "outcome" in d]
    assert [d["outcome"] for d in gate] == ["true"]
    condition = tasks[gate[0]["task_key"]]["condition_task"]
    assert JOB_PARAMETER.fullmatch(condition["left"]).group(1) == "train_churn" and condition["op"] == "EQUAL_TO"
    # an excluded training must not hold scoring back; a failed one must
    assert "churn_train" in [d["task_key"] for d in score["depends_on"]] and score["run_if"] == "NONE_FAILED"


@pytest.mark.parametrize("as_of", ["", "2025-06-30"])
def test_task_arguments_parse_with_the_real_parser_and_load_the_overlay(as_of):
    parser = build_parser()
    for _, name, job in _jobs():
        for key, task in _stage_tasks(job).items():
            command = Path(task["spark_python_task"]["python_file"]).stem
            arguments = [_substitute(a, job, as_of=as_of) for a in task["spark_python_task"].get("parameters", [])]
            args = parser.parse_args([command, *arguments])
            assert Path(args.conf_dir) == CONF_DIR, f"{name}.{key}"
            module = importlib.import_module(STAGES[command])
            config = load_config(args.env, args.conf_dir, [*args.overrides, *module.config_overrides(args)])
            assert config.storage.catalog == "metastore"
            if "as_of" in vars(args):
                expected = dt.date.fromisoformat(as_of) if as_of else None
                assert args.as_of == expected and config.as_of == expected, f"{name}.{key}"


def test_blank_as_of_means_the_default_and_a_bad_one_exits_2():
    parser = build_parser()
    assert parser.parse_args(["features", "--as-of", ""]).as_of is None
    assert parser.parse_args(["features", "--as-of", " "]).as_of is None
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["features", "--as-of", "30/06/2025"])
    assert stop.value.code == 2


def test_every_reference_is_defined():
    variables = set(ROOT["variables"])
    for path in [BUNDLE / "databricks.yml", *RESOURCE_FILES]:
        for text in _strings(_load(path)):
            for reference in REFERENCE.findall(text):
                head = reference.split(".")[0]
                assert head in {"var", "workspace", "bundle", "resources"}, f"{path.name}: ${{{reference}}}"
                if head == "var":
                    assert reference.removeprefix("var.") in variables, f"{path.name}: ${{{reference}}} is not defined"
    for _, name, job in _jobs():
        defined = {p["name"] for p in job.get("parameters", [])}
        for text in _strings(job["tasks"]):
            for parameter in JOB_PARAMETER.findall(text):
                assert parameter in defined, f"{name}: {{{{job.parameters.{parameter}}}}} is not a job parameter"


def test_the_env_default_names_an_overlay():
    env = ROOT["variables"]["env"]["default"]
    assert (CONF_DIR / f"{env}.yaml").is_file()
    for _, name, job in _jobs():
        defaults = {p["name"]: p["default"] for p in job["parameters"]}
        assert defaults["env"] == "${var.env}", name


def test_uploaded_and_built_paths_exist():
    artifact = ROOT["artifacts"]["segmentation"]
    project = (BUNDLE / artifact["path"]).resolve()
    assert project == REPO and (project / "pyproject.toml").is_file()
    assert "--wheel-dir dist" in artifact["build"]
    (built,) = [(BUNDLE / f["source"]).resolve() for f in artifact["files"]]
    assert built == project / "dist" / "*.whl"
    synced = [(BUNDLE / p).resolve() for p in ROOT["sync"]["paths"]]
    assert all(p.is_dir() for p in synced) and CONF_DIR in synced
    for folder, name, job in _jobs():
        for key, task in _stage_tasks(job).items():
            script = (folder / task["spark_python_task"]["python_file"]).resolve()
            assert script.is_file(), f"{name}.{key}: {script}"
            assert any(script.is_relative_to(p) for p in synced), f"{name}.{key}: {script} is not uploaded"
            if "environment_key" in task:  # serverless: the environment installs the wheel
                (environment,) = [e for e in job["environments"] if e["environment_key"] == task["environment_key"]]
                wheels = environment["spec"]["dependencies"]
            else:
                wheels = [lib["whl"] for lib in task["libraries"]]
            assert [(folder / wheel).resolve() for wheel in wheels] == [built], f"{name}.{key}"
        for cluster in job.get("job_clusters", []):
            assert cluster["new_cluster"]["data_security_mode"] == "SINGLE_USER"


def test_the_serverless_job_is_the_classic_one_without_clusters():
    jobs = {name: job for _, name, job in _jobs()}
    classic, serverless = jobs["segmentation_pipeline"], jobs["segmentation_pipeline_serverless"]
    assert "job_clusters" not in serverless and serverless["schedule"]["pause_status"] == "PAUSED"
    assert [p for p in serverless["parameters"] if p["name"] != "key_file"] == classic["parameters"]
    (environment,) = serverless["environments"]
    assert int(environment["spec"]["environment_version"]) >= 4  # Spark 4 (Databricks Connect 17) and Python 3.12
    compute = {"job_cluster_key", "libraries", "environment_key"}
    for mine, theirs in zip(serverless["tasks"], classic["tasks"], strict=True):
        assert {k: v for k, v in mine.items() if k not in compute | {"spark_python_task"}} == {
            k: v for k, v in theirs.items() if k not in compute | {"spark_python_task"}}
        if "spark_python_task" in theirs:
            assert set(mine) & compute == {"environment_key"} and mine["environment_key"] == environment["environment_key"]
            ours, base = mine["spark_python_task"], theirs["spark_python_task"]
            assert ours["python_file"] == base["python_file"]
            # The key comes from a volume file: no cluster environment variables on serverless.
            assert ours["parameters"] == [*base["parameters"], "--set", "privacy.key_file={{job.parameters.key_file}}"]


def test_the_wheel_holds_what_the_scripts_import():
    """The wheel ships the library only; every script in jobs/ is a thin entry point that
    imports nothing but it, so a cluster runs one copy of the code."""
    assert PYPROJECT["project"]["name"] == "segmentation"
    assert PYPROJECT["project"]["scripts"]["segmentation"] == "segmentation.cli:main"
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["segmentation*"]
    scripts = sorted((REPO / "jobs").glob("*.py"))
    assert {path.stem for path in scripts} == set(STAGES)
    for path in scripts:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert imported <= {"sys", "segmentation"}, (path.name, imported)
        code = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 40, path.name


def test_databricks_overlay_puts_every_table_and_model_in_one_unity_catalog_schema():
    overlay = _load(CONF_DIR / "databricks.yaml")
    assert set(overlay["storage"]["tables"]) == set(TableLocations.model_fields), "every table named explicitly"
    config = load_config("databricks", CONF_DIR)
    assert config.storage.catalog == "metastore" and config.spark.master is None and config.spark.delta == "provided"
    names = [*config.storage.tables.model_dump().values(), config.cluster.registered_model, config.churn.registered_model]
    schemas = {name.rsplit(".", 1)[0] for name in names}
    assert all(name.count(".") == 2 for name in names) and len(schemas) == 1
    catalog, schema = schemas.pop().split(".")
    assert config.storage.root.startswith(f"/Volumes/{catalog}/{schema}/")
    assert config.mlflow.artifact_location.startswith(f"dbfs:/Volumes/{catalog}/{schema}/")
    assert (config.mlflow.tracking_uri, config.mlflow.registry_uri) == ("databricks", "databricks-uc")
    assert config.privacy.allow_demo_key is False


def test_cluster_overlay_leaves_master_and_jars_to_spark_submit():
    config = load_config("cluster", CONF_DIR)
    assert config.spark.master is None and config.spark.delta == "provided"
    assert Path(config.storage.root).is_absolute() and config.privacy.allow_demo_key is False


def test_the_wheel_installs_on_a_databricks_runtime():
    assert "3.12.3" in SpecifierSet(PYPROJECT["project"]["requires-python"])
    pinned = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    # the bundle installs dist/*.whl with its dependencies on every job cluster
    assert not pinned & {"pyspark", "delta-spark"}, "the runtime brings its own; keep them in an extra"
