"""List the registered tasks/mixtures, or print processed examples of one task.

  python -m prompt_tuning.scripts.show_tasks                       # list
  python -m prompt_tuning.scripts.show_tasks --task super_glue_rte_v102 --split validation -n 3 \
      --source files --data_dir ../shared/data [--vocab ../shared/vocab/t5_spiece.model]

Without --vocab (and no $PROMPT_TUNING_VOCAB) examples are shown as text only, so it runs offline.
"""
import argparse
import sys
from typing import Optional, Sequence

import seqio
import tensorflow as tf


def text_dataset(task: seqio.Task, split: str) -> tf.data.Dataset:
    """The task's examples after its text preprocessors, before tokenization (needs no vocabulary)."""
    ds = task.source.get_dataset(split=split, shuffle=False)
    for prep in task.preprocessors:
        if prep is seqio.preprocessors.tokenize or isinstance(prep, seqio.CacheDatasetPlaceholder):
            break
        ds = prep(ds)
    return ds


def _show(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "tolist"):
        return str(value.tolist())
    return str(value)


def _source_kind(task) -> str:
    """'tfds' / 'files' for the benchmark tasks (chosen by gin), else the seqio source's class."""
    from prompt_tuning.tasks import sources
    if isinstance(task.source, sources.BenchmarkSource):
        return sources.source_settings().kind
    return type(task.source).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", help="task name; without it, list everything registered")
    parser.add_argument("--split", default="validation")
    parser.add_argument("-n", "--num_examples", type=int, default=3)
    parser.add_argument("--source", choices=("tfds", "files"), default=None, help="default: gin's (tfds)")
    parser.add_argument("--data_dir", help="official-files directory (with --source files)")
    parser.add_argument("--tfds_data_dir")
    parser.add_argument("--vocab", help="SentencePiece model; when given, token ids are printed too")
    args = parser.parse_args(argv)

    import prompt_tuning.tasks as tasks  # registers everything
    from prompt_tuning.tasks import registration

    if args.source:
        tasks.set_source(args.source, data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir)
    if args.vocab:
        tasks.set_vocabulary_path(args.vocab)

    if not args.task:
        print(f"{len(registration.REGISTERED_TASKS)} tasks:")
        for name in sorted(registration.REGISTERED_TASKS):
            print(f"  {name}  splits={list(seqio.get_mixture_or_task(name).source.splits)}")
        print(f"{len(registration.REGISTERED_MIXTURES)} mixtures:")
        for name in sorted(registration.REGISTERED_MIXTURES):
            print(f"  {name}  = {[t.name for t in seqio.get_mixture_or_task(name).tasks]}")
        return 0

    task = seqio.get_mixture_or_task(args.task)
    if isinstance(task, seqio.Mixture):
        print(f"{args.task} is a mixture of {[t.name for t in task.tasks]}; pass one of them", file=sys.stderr)
        return 2
    if args.vocab:
        ds = task.get_dataset(None, split=args.split, shuffle=False)
    else:
        ds = text_dataset(task, args.split)
    print(f"{args.task} [{args.split}]: {task.num_input_examples(args.split)} input examples "
          f"(source: {_source_kind(task)})")
    for i, ex in enumerate(ds.take(args.num_examples).as_numpy_iterator()):
        print(f"--- example {i}")
        for key in sorted(ex):
            print(f"  {key}: {_show(ex[key])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
