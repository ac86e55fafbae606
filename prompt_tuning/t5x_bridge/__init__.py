"""What t5x's own CLI (`python -m t5x.train / t5x.eval / t5x.infer`) needs to prompt-tune this project's models.

The only part of the project that imports t5x (an optional extra; the core package never imports this
subpackage).  The gin files that use it are `gin/t5x_cli/` (see the README, "Training with t5x's own CLI"):
  models.py         PromptEncoderDecoderModel: t5x's EncoderDecoderModel around our network, emitting the
                    `params_axes` collection t5x's partitioner and Adafactor read
  optim.py          match_any (the masked optimizer's filter) and prompt-aware Adafactor factor rules
  partitioning.py   logical-axis rules for the prompt (replicated)
  checkpointing.py  PromptCheckpointer: checkpoints hold only the trained parameters and their optimizer
                    state; the frozen model is read from its own checkpoint (any format the project reads)
"""
