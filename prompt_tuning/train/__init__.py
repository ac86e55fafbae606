"""Training: the trainer's jitted step, data, optimizers, checkpoints, evaluation and the train CLI."""
