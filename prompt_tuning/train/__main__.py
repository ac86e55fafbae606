"""`python -m prompt_tuning.train --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_finetune.gin
--gin.MODEL_DIR=... --gin.MIXTURE_OR_TASK_NAME=...` (t5x's train.py habits)."""
from prompt_tuning import gin_utils


def main(argv=None) -> dict:
    from prompt_tuning.train import loop
    return gin_utils.run_cli(loop.train, argv, __doc__, config_filename=None)  # the loop writes it


if __name__ == "__main__":
    main()
