"""Every gin/reproduce file parses with the project's gin handling: macros bound, the paper's recipe, tasks known."""
import pathlib

import gin
import pytest
import seqio

from prompt_tuning import gin_utils
from prompt_tuning.scripts import sweep
from prompt_tuning.t5 import config as t5_config

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
REPRODUCE = GIN_DIR / "reproduce"
USER = ["MODEL_DIR='/tmp/reproduce'", "INITIAL_CHECKPOINT_PATH='/ckpt/checkpoint_1100000'"]
TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")


def _rel(path: pathlib.Path) -> str:
    return str(path.relative_to(GIN_DIR))


def configurations():
    """(gin files, extra bindings) for every way the reproduce/ files are meant to be combined."""
    yield ["reproduce/table1.gin"], []
    for part in sorted((REPRODUCE / "table2").glob("*.gin")):
        yield ["reproduce/table2.gin", _rel(part)], []
    for part in sorted((REPRODUCE / "superglue").glob("*.gin")):
        if not part.stem.endswith("_sentinel"):
            yield ["reproduce/figure1.gin", _rel(part)], ["MODEL_SIZE='small'"]
        yield ["reproduce/figure3.gin", _rel(part)], ["MODEL_SIZE='xl'"]
        if not part.stem.endswith("_sentinel"):
            yield ["reproduce/table3.gin", _rel(part)], []


CONFIGS = list(configurations())


def test_every_reproduce_file_is_parsed_here():
    parsed = {f for files, _ in CONFIGS for f in files}
    top = sorted(p.name for p in REPRODUCE.glob("*.gin"))
    assert top == ["figure1.gin", "figure3.gin", "paper_recipe.gin", "table1.gin", "table2.gin", "table3.gin"]
    for name in top:  # the recipe is parsed through every table and figure file
        if name != "paper_recipe.gin":
            assert "include 'reproduce/paper_recipe.gin'" in (REPRODUCE / name).read_text(), name
    assert parsed | {"reproduce/paper_recipe.gin"} == {_rel(p) for p in REPRODUCE.rglob("*.gin")}
    assert {p.stem for p in (REPRODUCE / "superglue").glob("*.gin")} == set(TASKS) | {f"{t}_sentinel" for t in TASKS}


def _parse(files, bindings):
    gin.clear_config()
    gin_utils.register_configurables()
    gin_utils.parse_gin(files, USER + bindings)


def _task_of(metric: str, mixture: str) -> seqio.Task:
    """The task named by a metric key '<task>/<name>', checked to be part of the run's mixture or task."""
    task_name = metric.rsplit("/", 1)[0]
    provider = seqio.get_mixture_or_task(mixture)
    members = [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [provider.name]
    assert task_name in members, (metric, members)
    return seqio.get_mixture_or_task(task_name)


@pytest.mark.parametrize("files,bindings", CONFIGS, ids=[" + ".join(f) for f, _ in CONFIGS])
def test_parses_with_the_papers_recipe(files, bindings):
    _parse(files, bindings)
    macro = gin_utils.macro
    # The paper's recipe (Section 3).
    assert (macro("TRAIN_STEPS"), macro("BATCH_SIZE"), macro("LEARNING_RATE")) == (30000, 32, 0.3)
    assert gin.query_parameter("optimizers.make_optimizer.name") == "adafactor"
    assert gin.query_parameter("optimizers.learning_rate_schedule.decay") == "constant"
    assert gin.query_parameter("optimizers.adafactor.decay_rate") == 0.8
    assert gin.query_parameter("optimizers.adafactor.weight_decay_rate") == 1e-5
    assert gin.query_parameter("optimizers.adafactor.multiply_by_parameter_scale") is False
    assert macro("EVAL_PERIOD") == 1000 and macro("INITIAL_CHECKPOINT_PATH") == "/ckpt/checkpoint_1100000"
    # The model resolves: the prompted T5 1.1 (LM-adapted unless Figure 3c says otherwise) at the size asked.
    model = gin.query_parameter("%MODEL").scoped_configurable_fn().module  # the network inside the model
    size = {"reproduce/figure1.gin": "small", "reproduce/figure3.gin": "xl"}.get(files[0], "xxl")
    assert model.config == t5_config.get_config("t5_1_1_lm_adapted", size, dropout_rate=0.1, dtype="float32")
    assert macro("MODEL_FAMILY") == "t5_1_1_lm_adapted"  # (T5 1.1's config is the same; its weights are not)
    factory = model.encoder_input_processor_factory
    assert factory.keywords["length"] == 100
    init_name = factory.keywords["initializer"].__name__
    # The data: a registered mixture or task with a train split; early stopping on a dev-set metric.
    mixture = macro("MIXTURE_OR_TASK_NAME")
    provider = seqio.get_mixture_or_task(mixture)
    assert "train" in {s for t in getattr(provider, "tasks", [provider]) for s in t.splits}
    eval_task = _task_of(macro("BEST_METRIC"), mixture)
    assert "validation" in eval_task.splits and eval_task.predict_metric_fns
    assert set(macro("TASK_FEATURE_LENGTHS")) == {"inputs", "targets"}
    if macro("CLASS_LABELS"):
        assert init_name == "class_labels_init"
        assert mixture.startswith(("taskless_super_glue_", "taskless_glue_"))
    else:  # no label words (extractive QA): sampled vocabulary
        assert init_name == "sampled_vocab_init" and "mrqa" in mixture
    if "record" in mixture or "wsc" in mixture:  # the paper's footnote 7: words related to the task
        assert "commonsense" in macro("CLASS_LABELS")
    if files[0] == "reproduce/table3.gin":  # five prompts in one bank, every example to every row
        assert factory.keywords["num_prompts"] == 5 and macro("PROMPT_ROWS") == 5
    else:
        assert factory.keywords["num_prompts"] is None
    if files[-1].endswith("_sentinel.gin"):
        assert mixture.endswith("_sentinel") and macro("BEST_METRIC").split("/")[0].endswith("_sentinel")


def test_required_macros_are_named():
    for files, missing in ((["reproduce/table1.gin"], "INITIAL_CHECKPOINT_PATH"),
                           (["reproduce/figure1.gin", "reproduce/superglue/rte.gin"], "MODEL_SIZE"),
                           (["reproduce/figure1.gin"], "BEST_METRIC"),
                           (["reproduce/table2.gin"], "BEST_METRIC")):
        gin.clear_config()
        gin_utils.register_configurables()
        bindings = [b for b in USER if not b.startswith(missing)]
        with pytest.raises(gin_utils.GinConfigError, match=f"missing required macro {missing}"):
            gin_utils.parse_gin(files, bindings)


def test_figure3_panels_resolve_for_every_task(capsys):
    """The documented sweeps of Figure 3 (b) and (c) as dry runs: every point's gin parses, ReCoRD and WSC too."""
    tasks = ",".join(f"reproduce/superglue/{t}.gin" for t in TASKS)
    common = ["--gin_file=reproduce/figure3.gin", "--grid", "MODEL_SIZE='small','xxl'", "--metric=.*",
              "--gin.INITIAL_CHECKPOINT_PATH='/ckpt/lm100k_{MODEL_SIZE}/checkpoint_1100000'",
              "--output_dir=/tmp/unused", "--dry_run"]
    inits = "PROMPT_INIT=@prompts.uniform(),@prompt_init/prompts.sampled_vocab(),%CLASS_LABEL_INIT"
    assert sweep.main(common + ["--grid", f"gin_file={tasks}", "--grid", inits]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep: 48 points x 1 repeats") and len(out) == 49
    assert "--gin.INITIAL_CHECKPOINT_PATH='/ckpt/lm100k_xxl/checkpoint_1100000'" in out[-1]
    sentinel = ",".join(f"reproduce/superglue/{t}_sentinel.gin" for t in TASKS)
    assert sweep.main(common + ["--grid", f"gin_file={sentinel}", "--gin.MODEL_FAMILY='t5_1_1'"]) == 0
    assert capsys.readouterr().out.startswith("sweep: 16 points x 1 repeats")
    _parse(["reproduce/figure3.gin", "reproduce/superglue/copa_sentinel.gin"], ["MODEL_SIZE='base'",
                                                                               "MODEL_FAMILY='t5_1_1'"])
    assert gin_utils.macro("MODEL_FAMILY") == "t5_1_1" and gin_utils.macro("MODEL_SIZE") == "base"
    assert gin_utils.macro("MIXTURE_OR_TASK_NAME") == "taskless_super_glue_copa_v102_sentinel"
