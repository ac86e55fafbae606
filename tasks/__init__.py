"""seqio tasks and metrics (installed as `prompt_tuning.tasks`).

Importing this package registers every task and mixture with seqio:
  super_glue_<boolq|cb|copa|multirc|record|rte|wic|axb|axg>_v102, super_glue_wsc_v102_simple_{train,eval},
  glue_<cola|sst2|mrpc|qqp|stsb|mnli|mnli_matched|mnli_mismatched|qnli|rte|wnli|ax>_v002,
  glue_{mrpc_from_qqp,qqp_from_mrpc}_v002 (+ _zeroshot_v002 mixtures),
  each also as taskless_<name> (no task-name word) and, for classification, <name>_rank;
  mixtures super_glue_v102_proportional, glue_v002_proportional, super_glue_wsc_and_dev_v102_simple.
  synthetic_pretrain and synthetic_second_letter (offline, for the main job; see synthetic.py).
  mrqa_squad, mrqa_<out-of-domain set>, mrqa_squad_to_<set> and the mixture mrqa_squad_to_out_of_domain
  (the paper's Table 1; see mrqa.py).
  <task>_sentinel: every target prefixed with <extra_id_0> (the Figure 3 ablation; see sentinel.py).
Data source (TFDS or official files) and vocabulary: see sources.py and vocab.py.
"""
from prompt_tuning.tasks import glue  # noqa: F401
from prompt_tuning.tasks import mrqa  # noqa: F401
from prompt_tuning.tasks import sentinel  # noqa: F401
from prompt_tuning.tasks import superglue  # noqa: F401
from prompt_tuning.tasks import synthetic  # noqa: F401
from prompt_tuning.tasks import transfer  # noqa: F401
from prompt_tuning.tasks.sources import set_source, source_settings  # noqa: F401
from prompt_tuning.tasks.vocab import set_vocabulary_path, vocabulary_path  # noqa: F401
