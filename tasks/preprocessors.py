"""T5's text-to-text formats for GLUE and SuperGLUE (t5/data/preprocessors.py), written for this project.

Formats (T5's, byte for byte):
  glue:   "<benchmark> <key1>: <text1> <key2>: <text2> ..." -> label word (keys sorted unless given)
  stsb:   "stsb sentence1: ... sentence2: ..." -> score rounded to the nearest 0.2, e.g. "3.4"
  wsc:    "wsc: ... *pronoun* ..." -> referent text (T5's 'simple' WSC, as in the paper)
  record: "record query: ... entities: a, b passage: ..." -> one example per answer
An unlabelled example (label -1, the test splits) gets the target "<unk>", as T5.
"""
from typing import Optional, Sequence

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
rekey = seqio.preprocessors.rekey


def _label_word(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
    return tf.cond(tf.equal(label, -1), lambda: tf.constant("<unk>"),
                   lambda: tf.gather(list(label_names), label))


@seqio.map_over_dataset
def glue(x, benchmark_name: str, label_names: Sequence[str], feature_names: Optional[Sequence[str]] = None,
         id_key: Optional[str] = "idx"):
    """GLUE-style example -> T5 text-to-text; MultiRC also loses its HTML and keeps its 3-part idx."""
    keys = feature_names or sorted(set(x.keys()).difference(["label", "idx"]))
    parts = [benchmark_name]
    for key in keys:
        parts += [f"{key}:", x[key]]
    joined = tf.strings.join(parts, separator=" ")
    ex = {}
    if benchmark_name == "multirc":
        joined = tf.strings.regex_replace(joined, "<br>", " ")
        joined = tf.strings.regex_replace(joined, "<(/)?b>", "")
        for k in ("paragraph", "question", "answer"):
            ex[f"idx/{k}"] = x["idx"][k]
    elif id_key:
        ex["idx"] = x[id_key]
    ex["inputs"] = joined
    ex["targets"] = _label_word(x["label"], label_names)
    return ex


@seqio.map_over_dataset
def stsb(x):
    """STS-B: the score rounded to the nearest 0.2 (tf.round: half to even), written with one decimal."""
    joined = tf.strings.join(["stsb sentence1:", x["sentence1"], "sentence2:", x["sentence2"]], separator=" ")
    label = tf.as_string(tf.round(x["label"] * 5) / 5, precision=1)
    return {"inputs": joined, "targets": label, "idx": x["idx"]}


def _wsc_inputs(x):
    """The WSC text with the pronoun (at word span2_index) replaced by 'X'; T5's two special cases kept."""
    words = tf.strings.split([x["text"]], sep=" ").values
    with tf.control_dependencies([tf.debugging.assert_greater(x["span2_index"], 0),
                                  tf.debugging.assert_less(x["span2_index"], tf.size(words))]):
        pronoun_index = tf.identity(x["span2_index"])

    def create_input():
        with tf.control_dependencies([tf.debugging.assert_equal(words[pronoun_index], x["span2_text"])]):
            return tf.strings.join([tf.strings.reduce_join(words[:pronoun_index], separator=" "), "X",
                                    tf.strings.reduce_join(words[pronoun_index + 1:], separator=" ")],
                                   separator=" ")

    special_1 = ("The boy continued to whip the pony , and eventually the pony threw him over. John laughed "
                 "out quite loud. \"Good for him,\" he said. ")
    fixed_1 = ("The boy continued to whip the pony , and eventually the pony threw him over. John laughed out "
               "quite loud. \"Good for X ,\" he said.")
    special_2 = ("When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic "
                 "pebble in an iron safe . Some day they might want to use it , but really for now, what more "
                 "could they wish for?")
    fixed_2 = ("When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic "
               "pebble in an iron safe . Some day they might want to use X , but really for now, what more "
               "could they wish for?")
    return tf.case([(tf.equal(x["text"], special_1), lambda: tf.constant(fixed_1)),
                    (tf.equal(x["text"], special_2), lambda: tf.constant(fixed_2))],
                   default=create_input, exclusive=True)


def wsc_simple(dataset: tf.data.Dataset, label: str = "wsc:", correct_referent_only: bool = False):
    """WSC as T5/the paper: mark the pronoun with *..* and generate its referent (span1_text).

    For training set correct_referent_only=True: only positive examples have the right referent as target.
    """
    def map_fn(x):
        marked = tf.strings.regex_replace(_wsc_inputs(x), r" X ", " *" + x["span2_text"] + "* ")
        return {"inputs": tf.strings.join([label, marked], separator=" "),
                "targets": tf.reshape(x["span1_text"], []),
                "label": x.get("label", 0), "idx": x["idx"]}

    if correct_referent_only:
        dataset = dataset.filter(lambda x: tf.cast(x.get("label", False), tf.bool))
    return dataset.map(map_fn, num_parallel_calls=AUTOTUNE)


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """ReCoRD: one example per gold answer (or one '<unk>' example when there is none, the test split)."""
    def process_answers(x):
        num_answers = tf.size(x["answers"])
        n = tf.maximum(num_answers, 1)

        def dup(t):
            return tf.broadcast_to(t, tf.concat([[n], tf.shape(t)], axis=0))

        ex = {k: dup(v) for k, v in x.items() if k != "idx"}
        ex["targets"] = tf.cond(num_answers > 0, lambda: x["answers"], lambda: tf.constant(["<unk>"]))
        ex["idx"] = {"passage": dup(x["idx"]["passage"]), "query": dup(x["idx"]["query"])}
        return ex

    def to_text(x):
        passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
        passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
        joined = tf.strings.join(["record query:", x["query"], "entities:",
                                  tf.strings.reduce_join(x["entities"], separator=", "), "passage:", passage],
                                 separator=" ")
        return {"idx/passage": x["idx"]["passage"], "idx/query": x["idx"]["query"], "inputs": joined,
                "targets": x["targets"], "answers": x["answers"]}

    dataset = dataset.map(process_answers, num_parallel_calls=AUTOTUNE).unbatch()
    return dataset.map(to_text, num_parallel_calls=AUTOTUNE)


@seqio.map_over_dataset
def remove_first_text_token(x):
    """The 'taskless' format of the paper: drop the task-name word, e.g. 'rte sentence1: ..' -> 'sentence1: ..'."""
    x = dict(x)
    x["inputs"] = tf.strings.regex_replace(x["inputs"], r"^[^ ]* ", "", replace_global=False)
    return x


def rank_classification(dataset: tf.data.Dataset, label_names: Sequence[str]) -> tf.data.Dataset:
    """One example per (example, label string) for scoring every label; eval only (idx = [example, choice]).

    Keeps: inputs, targets (the choice's label string), idx [2] int32, is_correct, label (gold class id),
    and the MultiRC question id as 'group' when present so group metrics still apply.
    """
    names = tf.constant(list(label_names))
    n = len(label_names)

    def expand(i, x):
        gold = tf.argmax(tf.cast(tf.equal(names, x["targets"]), tf.int32), output_type=tf.int32)
        known = tf.reduce_any(tf.equal(names, x["targets"]))
        gold = tf.where(known, gold, -1)
        choices = tf.range(n, dtype=tf.int32)
        out = {
            "inputs": tf.fill([n], x["inputs"]),
            "targets": names,
            "idx": tf.stack([tf.fill([n], tf.cast(i, tf.int32)), choices], axis=1),
            "is_correct": tf.equal(choices, gold),
            "label": tf.fill([n], gold),
        }
        if "idx/question" in x:
            out["group"] = tf.fill([n], x["idx/question"])
        return out

    return dataset.enumerate().map(expand, num_parallel_calls=AUTOTUNE).unbatch()
