"""Benchmark real-length batches at W-small: length buckets, length grouping and shared-encoder rank scoring
against PyTorch + PEFT with dynamic padding.

W-small dimensions (bench/common.py), a 100-token prompt, float32 on CPU, random weights.  Input lengths are
the real validation sets': the project's own seqio tasks (T5's formats, e.g. "rte hypothesis: ... premise: ...";
the vocabulary ../shared/vocab/t5_spiece.model; EOS; clipped at 512) on the files in ../shared/data.  Token ids
are random with those lengths (0 pads, EOS = 1 last); train targets have the label words' lengths, padded to 8.
Without ../shared a lognormal matched to each set's mean/p95/max stands in, and the output says so.  Every
system gets the same seeded stream of --batches batches.

Train (RTE, BoolQ, MRPC; --batch examples a batch):
  ours_pad       the real Trainer.train_step, every batch padded to 512 inputs (+100 prompt), 8 targets.
  ours_buckets   the same batches cut by data.trim_to_buckets to --buckets inputs (default 64/128/256/512; one
                 program per bucket).
  ours_grouped   as ours_buckets, but each window of --window batches is sorted by input length, cut into
                 batches and those shuffled (seeded): data.group_by_length's composition, in numpy here.
  ours_packed    PACK=True: the stream packed by the model's converter (each example with its 100 prompt slots,
                 seqio's packing) into rows of 512 + 100 inputs and 64 targets, --batch rows a step; the stream
                 is made long enough for --batches such batches, and ex/s counts the examples they hold.
  peft           transformers T5 + peft PromptTuningConfig(100), Adafactor with the paper's settings, every batch
                 padded to its longest example by DataCollatorForSeq2Seq (labels padded with -100).
  peft_compile   the same under torch.compile(model, dynamic=True).
Rank-classification eval (CB: 3 labels, RTE: 2; --eval-batch inputs a batch, ours cut to buckets):
  ours_rank      Trainer.score_candidates: [B] inputs, [B, C, 8] candidates, each input encoded once.
  ours_rank_rows Trainer.score_batch on B*C rows (each input repeated per label).
  peft_rank      the PEFT model on B*C rows (dynamic padding), summed label log-probs.

Each (system, task, round) runs in its own child.  Warm-up: one call per distinct batch shape (jit and
torch.compile compile per shape; eager PEFT: its largest batch), then --steps timed passes over the stream;
ex/s = examples per pass / median pass.  Each (system, task) keeps its compiled programs for the run (jax's
persistent cache, Inductor's cache), so rounds after the first load them instead of compiling again; peak GB
is the largest over the rounds, so it includes a compile.  step GB: VmHWM over the timed passes.
'useful': real tokens + 100 prompt positions (each input once) over the positions computed.

    python bench/bench_real_lengths.py --json bench/results_real_lengths.jsonl    # full matrix, 3 rounds
    python bench/bench_real_lengths.py --tasks rte --systems ours_buckets,peft --batch 32
    python bench/bench_real_lengths.py --quick       # tiny model, rte + cb, 1 round: checks the script only
"""
import argparse
import collections
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TRAIN_SYSTEMS = ("ours_pad", "ours_buckets", "ours_grouped", "ours_packed", "peft", "peft_compile")
EVAL_SYSTEMS = ("ours_rank", "ours_rank_rows", "peft_rank")
BUCKETS, MAX_INPUT, TARGET_LEN, PROMPT_LEN = "64,128,256,512", 512, 8, common.PROMPT_LEN
PACK_TARGETS = 64   # a packed row's target positions: room for every example its inputs can hold
# name: seqio task, phases, label words' tokens (t5_spiece.model + EOS), stand-in (mean, p95, max, examples)
TASKS = {"rte": ("super_glue_rte_v102", ("train", "eval"), (5, 6), (84, 178, 284, 277)),
         "boolq": ("super_glue_boolq_v102", ("train",), (4, 2), (159, 296, 1142, 3270)),
         "mrpc": ("glue_mrpc_v002", ("train",), (6, 2), (67, 91, 107, 408)),
         "cb": ("super_glue_cb_v102", ("eval",), (5, 2, 2), (108, 213, 301, 56))}
W_SMALL = dict(vocab=common.VOCAB, d_model=512, heads=6, head_dim=64, d_ff=1024, layers=8)
TINY = dict(vocab=common.VOCAB, d_model=64, heads=2, head_dim=32, d_ff=128, layers=2)


def phase_of(system):
    return "train" if system in TRAIN_SYSTEMS else "eval"


# --------------------------------------------------------------------------------------------------- data
def load_lengths(names, shared):
    """{task: {'inputs', 'targets', 'source'}}: each validation example's token counts, or a stand-in's."""
    data, vocab = os.path.join(shared, "data"), os.path.join(shared, "vocab", "t5_spiece.model")
    out, rng = {}, np.random.default_rng(0)
    for name in names:
        seqio_name, _, labels, (mean, p95, top, n) = TASKS[name]
        if os.path.isdir(data) and os.path.isfile(vocab):
            import seqio

            from prompt_tuning import tasks
            tasks.set_source("files", data)
            tasks.set_vocabulary_path(vocab)
            rows = list(seqio.get_mixture_or_task(seqio_name).get_dataset(
                {"inputs": MAX_INPUT, "targets": TARGET_LEN}, split="validation", shuffle=False).as_numpy_iterator())
            out[name] = {"inputs": [len(r["inputs"]) for r in rows], "targets": [len(r["targets"]) for r in rows],
                         "source": f"{seqio_name} validation, {data}"}
            continue
        # lognormal with this mean and p95: ln(p95/mean) = 1.645 s - s^2/2, mu = ln(mean) - s^2/2
        s = 1.645 - math.sqrt(1.645 ** 2 - 2 * math.log(p95 / mean))
        inputs = np.clip(np.rint(rng.lognormal(math.log(mean) - s * s / 2, s, n)), 4, min(top, MAX_INPUT))
        out[name] = {"inputs": inputs.astype(int).tolist(), "targets": rng.choice(labels, n).tolist(),
                     "source": f"SYNTHETIC lognormal (mean {mean}, p95 {p95}, max {top}): no {data} or {vocab}"}
    return out


def random_ids(rng, n, vocab):
    ids = rng.integers(3, vocab, n, dtype=np.int32)
    ids[-1] = 1
    return ids


def stream(lens, n, seed, vocab):
    """n example slots by a seeded shuffle of the set (cycled when it is smaller): input ids, target ids."""
    rng = np.random.default_rng(seed)
    count = len(lens["inputs"])
    idx = np.concatenate([rng.permutation(count) for _ in range(-(-n // count))])[:n]
    return ([random_ids(rng, lens["inputs"][i], vocab) for i in idx],
            [random_ids(rng, lens["targets"][i], vocab) for i in idx])


def compositions(inputs, b, window, seed, grouped):
    """[N, b] slots per batch: in stream order, or each window of batches sorted by length (stable), cut into
    batches and those shuffled, as data.group_by_length does."""
    slots = np.arange(len(inputs) // b * b)
    if not grouped:
        return slots.reshape(-1, b)
    lengths, out = np.array([len(x) for x in inputs]), []
    for w, start in enumerate(range(0, len(slots), window * b)):
        chunk = slots[start:start + window * b]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")].reshape(-1, b)
        out.extend(chunk[np.random.default_rng([seed, w]).permutation(len(chunk))])
    return np.stack(out)


def pad(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for j, r in enumerate(rows):
        out[j, :len(r)] = r
    return out


def seq2seq(inputs, targets):
    """t5x's encoder-decoder features; decoder inputs: the targets shifted right (0 first) on the last axis."""
    shifted = np.concatenate([np.zeros_like(targets[..., :1]), targets[..., :-1]], axis=-1)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": shifted, "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(np.float32)}


def collator():
    """DataCollatorForSeq2Seq with a 3-word tokenizer: padding needs the pad id, not the vocabulary."""
    import transformers
    from tokenizers import Tokenizer, models
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>")),
        pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    return transformers.DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")


def packed_batches(inputs, targets, rows_per_batch, num_batches):
    """(batches, examples they hold, useful share): the stream through EncDecFeatureConverter(pack=True) with
    prompt slots, as data.get_dataset(PACK=True) converts a task; the first num_batches full batches of rows."""
    import tensorflow as tf

    from prompt_tuning.feature_converters import EncDecFeatureConverter
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": x, "targets": t} for x, t in zip(inputs, targets)),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    converter = EncDecFeatureConverter(pack=True, prompt_slots=PROMPT_LEN)
    rows = list(converter(ds, {"inputs": MAX_INPUT, "targets": PACK_TARGETS}).as_numpy_iterator())
    rows = rows[:len(rows) // rows_per_batch * rows_per_batch][:num_batches * rows_per_batch]
    batches = [{k: np.stack([r[k] for r in rows[i:i + rows_per_batch]]) for k in rows[0]}
               for i in range(0, len(rows), rows_per_batch)]
    examples = sum(int(r["encoder_segment_ids"].max()) for r in rows)
    # Nonzero encoder tokens are the examples' tokens and their prompt slots.
    useful = sum(np.count_nonzero(r["encoder_input_tokens"]) + np.count_nonzero(r["decoder_target_tokens"])
                 for r in rows)
    return batches, examples, useful / (len(rows) * (MAX_INPUT + PROMPT_LEN + PACK_TARGETS))


def make_batches(system, task, lens, args, vocab):
    """The system's host batches (numpy cut to buckets for ours, collated tensors for PEFT), the examples they
    hold, the useful share of the positions they compute, and their input widths."""
    train = phase_of(system) == "train"
    b = args.batch if train else args.eval_batch
    if system == "ours_packed":   # enough of the stream for --batches batches of packed rows
        inputs, targets = stream(lens, args.batches * b * (MAX_INPUT + PROMPT_LEN) // (PROMPT_LEN + 4), args.seed,
                                 vocab)
        batches, examples, useful = packed_batches(inputs, targets, b, args.batches)
        return batches, examples, useful, f"{MAX_INPUT + PROMPT_LEN}x{len(batches)}"
    inputs, targets = stream(lens, args.batches * b, args.seed, vocab)
    comp = compositions(inputs, b, args.window, args.seed, grouped=system == "ours_grouped")
    label_rng = np.random.default_rng([args.seed, 1])   # the label words: the same ids for every input
    cands = [random_ids(label_rng, n, vocab) for n in TASKS[task][2]]
    useful = sum(len(x) + PROMPT_LEN for x in inputs[:comp.size])
    useful += sum(len(t) for t in targets[:comp.size]) if train else comp.size * sum(len(x) for x in cands)
    if system.startswith("peft"):
        collate = collator()
        labels = (lambda k: [targets[k]]) if train else (lambda k: cands)   # rank: a row per (input, label)
        batches = [collate([{"input_ids": inputs[k].tolist(), "labels": t.tolist()} for k in rows
                            for t in labels(k)]) for rows in comp]
        enc, dec = "input_ids", "labels"
    else:
        from prompt_tuning.models import EncoderDecoderModel
        from prompt_tuning.train import data
        c, batches = len(cands), []
        for rows in comp:
            inp = pad([inputs[k] for k in rows], MAX_INPUT)
            if train:
                batch = seq2seq(inp, pad([targets[k] for k in rows], TARGET_LEN))
            elif system == "ours_rank":
                batch = seq2seq(inp, np.broadcast_to(pad(cands, TARGET_LEN), (b, c, TARGET_LEN)).copy())
            else:
                batch = seq2seq(np.repeat(inp, c, axis=0), np.tile(pad(cands, TARGET_LEN), (b, 1)))
            buckets = None if system == "ours_pad" else {"inputs": tuple(int(n) for n in args.buckets.split(","))}
            batches.append(data.trim_to_buckets(batch, EncoderDecoderModel.LENGTH_GROUPS, buckets))
        enc, dec = "encoder_input_tokens", "decoder_target_tokens"
    computed = sum(x[enc].shape[0] * (x[enc].shape[1] + PROMPT_LEN) + np.prod(x[dec].shape) for x in batches)
    widths = collections.Counter(int(x[enc].shape[1]) for x in batches)
    return batches, comp.size, useful / computed, " ".join(f"{w}x{n}" for w, n in sorted(widths.items()))


def first_of_each_shape(batches):
    seen = {}
    for x in batches:
        seen.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(x.items())), x)
    return list(seen.values())


# --------------------------------------------------------------------------------------------------- systems
def ours_system(system, batches, dims, args):
    """(step, finish, warm-up batches) on the real Trainer, built as common.ours_setup (or TINY)."""
    import functools

    import jax

    from prompt_tuning import models, partitioning
    from prompt_tuning.prompts import PromptProcessor, initializers
    from prompt_tuning.t5 import config as t5config
    from prompt_tuning.t5 import network
    from prompt_tuning.train import optimizers, params as tparams, trainer as ttrainer
    cfg = t5config.get_config("t5_1_1", "small")
    if dims is TINY:
        cfg = cfg.replace(vocab_size=dims["vocab"], emb_dim=dims["d_model"], num_heads=dims["heads"],
                          head_dim=dims["head_dim"], mlp_dim=dims["d_ff"], num_encoder_layers=dims["layers"],
                          num_decoder_layers=dims["layers"])
    processor = functools.partial(PromptProcessor, length=PROMPT_LEN, initializer=initializers.uniform())
    model = models.EncoderDecoderModel(network.Transformer(config=cfg, encoder_input_processor_factory=processor))
    mesh = partitioning.make_mesh()
    shapes = model.dummy_batch({"inputs": MAX_INPUT, "targets": TARGET_LEN}, batch_size=args.batch)
    params, shardings = tparams.init_params(model, shapes, mesh, jax.random.PRNGKey(0))
    trainer = ttrainer.Trainer(model=model, params=params, param_shardings=shardings, mesh=mesh,
                               optimizer=optimizers.adafactor(learning_rate=0.3), learning_rate_fn=lambda step: 0.3,
                               num_microbatches=1 if args.microbatch_positions else args.microbatches,
                               microbatch_positions=args.microbatch_positions or None, z_loss=1e-4)
    del params
    # Placed before timing, as common.ours_setup (= data.to_global on one process, without its tf import).
    batches[:] = [{k: jax.device_put(v, trainer.batch_sharding) for k, v in x.items()} for x in batches]
    box = {"state": trainer.init_state(), "out": []}
    score = trainer.score_candidates if system == "ours_rank" else trainer.score_batch

    def step(x):
        if system in TRAIN_SYSTEMS:
            box["state"], _ = trainer.train_step(box["state"], x)
        else:
            box["out"].append(score(box["state"], x))

    def finish():   # jax dispatches asynchronously: a pass ends when its last result exists
        jax.block_until_ready((box["state"], box["out"]))
        box["out"] = []
    return step, finish, first_of_each_shape(batches)


def peft_system(system, batches, dims, args):
    """(step, finish, warm-up batches) on transformers + peft, as bench_w_small's run_peft."""
    import torch
    import transformers
    from peft import PromptTuningConfig, TaskType, get_peft_model
    base = common.torch_t5(dims["vocab"], dims["d_model"], dims["heads"], dims["head_dim"], dims["d_ff"],
                           dims["layers"], args.threads)
    model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=PROMPT_LEN))
    batches[:] = [dict(x) for x in batches]
    # Eager PEFT compiles nothing: one call on its largest batch grows its buffers.  Compiled: every shape.
    largest = [max(batches, key=lambda x: x["input_ids"].numel())]
    if system == "peft_rank":
        model.eval()
        c = len(batches[0]["labels"]) // args.eval_batch

        def score(x):
            with torch.inference_mode():
                logp = torch.log_softmax(model(**x).logits.float(), dim=-1)
                labels = x["labels"]
                return (logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * (labels != -100)).sum(-1).view(-1, c)
        return score, lambda: None, largest
    model.train()
    opt = transformers.optimization.Adafactor([p for p in model.parameters() if p.requires_grad], lr=0.3,
                                              decay_rate=-0.8, scale_parameter=False, relative_step=False,
                                              warmup_init=False, clip_threshold=1.0, weight_decay=1e-5)
    forward = torch.compile(model, dynamic=True) if system == "peft_compile" else model

    def step(x):
        forward(**x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, lambda: None, first_of_each_shape(batches) if system == "peft_compile" else largest


# --------------------------------------------------------------------------------------------------- driver
def worker(args):
    system, task = args.worker
    if system == "lengths":   # in a child, so the parent never imports tensorflow (see main)
        with open(args.lengths, "w") as f:
            json.dump(load_lengths(task.split(","), args.shared), f)
        return common.report({})
    t0 = time.perf_counter()
    dims = TINY if args.quick else W_SMALL
    with open(args.lengths) as f:
        lens = json.load(f)[task]
    batches, examples, useful, widths = make_batches(system, task, lens, args, dims["vocab"])
    step, finish, warm = (peft_system if system.startswith("peft") else ours_system)(system, batches, dims, args)
    warm_s = []
    for x in warm:   # one call per shape compiles it (or, after the first round, loads it from the cache)
        t = time.perf_counter()
        step(x)
        finish()
        warm_s.append(time.perf_counter() - t)

    def one_pass():
        for x in batches:
            step(x)
        finish()
    times, cpu, step_rss = common.time_calls(one_pass, 0, args.steps)
    common.report({
        "system": system, "task": task, "phase": phase_of(system), "quick": bool(args.quick), "batch": args.batch,
        "eval_batch": args.eval_batch, "batches": len(batches), "window": args.window, "buckets": args.buckets,
        "microbatches": args.microbatches, "microbatch_positions": args.microbatch_positions,
        "examples_per_pass": examples,
        "median_s": statistics.median(times), "times_s": times, "cpu_median_s": statistics.median(cpu),
        "examples_per_s": examples / statistics.median(times), "useful_share": useful, "input_widths": widths,
        "warmup_s": warm_s, "peak_rss_bytes": common.maxrss_bytes(), "step_rss_bytes": step_rss,
        "lengths_source": lens["source"], "wall_s": time.perf_counter() - t0})


def print_tables(results, tasks, systems):
    """Per (task, system): ex/s over all rounds' passes, the largest peaks; then the ratios of ex/s."""
    speed = {}
    print("\n| task | system | ex/s | peak GB | step GB | useful | input widths x batches |\n" + "|---" * 7 + "|")
    for (system, task), runs in sorted(results.items(), key=lambda kv: (tasks.index(kv[0][1]),
                                                                          systems.index(kv[0][0]))):
        speed[system, task] = runs[0]["examples_per_pass"] / statistics.median(t for r in runs for t in r["times_s"])
        step_rss = [r["step_rss_bytes"] for r in runs if r["step_rss_bytes"]]
        print(f"| {task} | {system} | {speed[system, task]:.2f} | {common.gb(max(r['peak_rss_bytes'] for r in runs))}"
              f" | {common.gb(max(step_rss) if step_rss else None)} | {runs[0]['useful_share']:.0%} | "
              f"{runs[0]['input_widths']} |")
    pairs = [(a, b) for a in ("ours_buckets", "ours_grouped", "ours_packed") for b in ("ours_pad", "peft",
                                                                                     "peft_compile")]
    pairs += [("ours_rank", "peft_rank"), ("ours_rank", "ours_rank_rows")]
    print("\n| task | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " |\n" + "|---" * (len(pairs) + 1) + "|")
    for task in tasks:
        print(f"| {task} | " + " | ".join(f"{speed[a, task] / speed[b, task]:.2f}x" if (a, task) in speed and
                                          (b, task) in speed else "-" for a, b in pairs) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=None, help=f"of {','.join(TASKS)} (default all; --quick: rte,cb)")
    p.add_argument("--systems", default=",".join(TRAIN_SYSTEMS + EVAL_SYSTEMS))
    p.add_argument("--batch", type=int, default=8, help="train examples per batch (e.g. 32)")
    p.add_argument("--eval-batch", type=int, default=8, help="eval inputs per batch")
    p.add_argument("--batches", type=int, default=None, help="batches in the stream (default 8; --quick 4)")
    p.add_argument("--window", type=int, default=4, help="ours_grouped: batches sorted together")
    p.add_argument("--buckets", default=BUCKETS, help="ours (but ours_pad): input lengths, as LENGTH_BUCKETS")
    p.add_argument("--steps", type=int, default=1, help="timed passes over the stream per child")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; --quick 1)")
    p.add_argument("--microbatches", type=int, default=4, help="ours: Trainer num_microbatches (bench_w_small's)")
    p.add_argument("--microbatch-positions", type=int, default=0,
                   help="ours: Trainer microbatch_positions instead of --microbatches (0: off), e.g. 2048")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--shared", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
    p.add_argument("--wait-load", type=float, default=0.0,
                   help="before each child, wait (up to 10 min) until the 1-minute load average is below this")
    p.add_argument("--quick", action="store_true", help="a tiny model, rte + cb, 4 batches, 1 round: a smoke test")
    p.add_argument("--json", help="also append the results as JSON lines here")
    p.add_argument("--lengths", help=argparse.SUPPRESS)
    p.add_argument("--worker", nargs=2, metavar=("SYSTEM", "TASK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = args.batches or (4 if args.quick else 8)
    if args.worker:
        return worker(args)
    args.rounds = args.rounds or (1 if args.quick else 3)
    tasks = [t for t in (args.tasks or ("rte,cb" if args.quick else ",".join(TASKS))).split(",") if t]
    systems = [s for s in args.systems.split(",") if s]
    for flag, given, known in (("tasks", tasks, TASKS), ("systems", systems, TRAIN_SYSTEMS + EVAL_SYSTEMS)):
        if set(given) - set(known):
            p.error(f"--{flag}: unknown {sorted(set(given) - set(known))}; known: {', '.join(known)}")
    # The parent imports neither torch nor tensorflow: a child's ru_maxrss (common.maxrss_bytes) starts at the
    # RSS of the process that spawned it, so a heavy parent would put a floor under every peak.
    if not all(importlib.util.find_spec(m) for m in ("peft", "torch", "transformers")):
        print("torch/transformers/peft not installed (pip install -e .[torch]); skipping the PEFT baselines")
        systems = [s for s in systems if not s.startswith("peft")]
    split = f"of {args.microbatch_positions} positions" if args.microbatch_positions else args.microbatches
    print(f"{'TINY (smoke only)' if args.quick else 'W-small'}: train batch {args.batch}, eval batch "
          f"{args.eval_batch}, {args.batches} batches, window {args.window}, {args.steps} timed passes x "
          f"{args.rounds} rounds, ours microbatches {split}; load {' '.join(common.loadavg())}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_real_lengths_") as tmp:
        lengths_path = os.path.join(tmp, "lengths.json")
        passthrough = ["--batch", str(args.batch), "--eval-batch", str(args.eval_batch), "--batches",
                       str(args.batches), "--window", str(args.window), "--buckets", args.buckets, "--steps",
                       str(args.steps), "--microbatches", str(args.microbatches), "--microbatch-positions",
                       str(args.microbatch_positions), "--seed", str(args.seed), "--threads", str(args.threads),
                       "--shared", args.shared, "--lengths", lengths_path] + (["--quick"] if args.quick else [])
        if common.run_child(__file__, ["lengths", ",".join(tasks), *passthrough], "lengths") is None:
            return None
        with open(lengths_path) as f:
            for task, lens in json.load(f).items():
                x = np.array(lens["inputs"])
                print(f"  {task}: {len(x)} inputs, tokens mean {x.mean():.0f} p95 {np.percentile(x, 95):.0f} "
                      f"max {x.max()} ({lens['source']})", flush=True)
        for round_index in range(args.rounds):
            for task in tasks:
                for system in common.alternate([s for s in systems if phase_of(s) in TASKS[task][1]], round_index):
                    cache = os.path.join(tmp, f"cache_{system}_{task}")   # this (system, task)'s programs only
                    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, TORCHINDUCTOR_CACHE_DIR=cache,
                               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
                    r = common.run_child(__file__, [system, task, *passthrough], f"{system}/{task}",
                                         args.wait_load, env)
                    if r is None:
                        continue
                    r["round"] = round_index
                    results.setdefault((system, task), []).append(r)
                    print(f"round {round_index} {task:5s} {system:14s} {r['examples_per_s']:7.2f} ex/s  pass "
                          f"{r['median_s']:6.2f} s  warm-up {'+'.join(f'{t:.1f}' for t in r['warmup_s'])} s  peak "
                          f"{common.gb(r['peak_rss_bytes'])} GB  step {common.gb(r['step_rss_bytes'])} GB  useful "
                          f"{r['useful_share']:.0%}  widths {r['input_widths']}  wall {r['wall_s']:.0f} s  load "
                          f"{r['load_before']} -> {r['load_after']}", flush=True)
                    common.append_json(args.json, r)
    print_tables(results, tasks, systems)
    return results


if __name__ == "__main__":
    main()
