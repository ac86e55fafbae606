"""QQP <-> MRPC zero-shot domain transfer (the paper's Table 2).

glue_<target>_from_<source>_v002: the target's validation set whose postprocessor first translates the
model's source-task label words into the target's (duplicate <-> equivalent), then scores with the
target's metrics.  glue_<target>_from_<source>_zeroshot_v002 (a mixture) trains on the source task and
evaluates on that eval task, so one name runs one direction.  taskless_ variants drop the task word.
"""
from prompt_tuning.tasks import glue
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks.registration import TASKLESS_PREFIX, add_mixture, add_task

QQP_TO_MRPC = {"duplicate": "equivalent", "not_duplicate": "not_equivalent"}
MRPC_TO_QQP = {v: k for k, v in QQP_TO_MRPC.items()}
TRANSLATIONS = {("qqp", "mrpc"): QQP_TO_MRPC, ("mrpc", "qqp"): MRPC_TO_QQP}


def register() -> None:
    for (src, tgt), mapping in TRANSLATIONS.items():
        postprocess = postprocessors.sequential(postprocessors.translate_labels(mapping), glue.postprocess_fn(tgt))
        metric_fns = glue.METRICS[tgt] + [glue.metrics.invalid_count]
        for prefix, extra in (("", []), (TASKLESS_PREFIX, [preprocessors.remove_first_text_token])):
            eval_task = add_task(f"{prefix}glue_{tgt}_from_{src}_v002", glue.source(tgt, ("validation",)),
                                 glue.text_preprocessors(tgt) + extra, postprocess, metric_fns)
            add_mixture(f"{prefix}glue_{tgt}_from_{src}_zeroshot_v002",
                        [f"{prefix}glue_{src}_v002", eval_task], default_rate=1.0)


register()
