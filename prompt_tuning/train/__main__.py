"""`python -m prompt_tuning.train --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_finetune.gin
--gin.MODEL_DIR=... --gin.MIXTURE_OR_TASK_NAME=...` (t5x's train.py habits)."""
from prompt_tuning import gin_utils


def register_configurables() -> None:
    """Imports every module whose @gin.configurable names the gin files use."""
    import prompt_tuning.prompts  # noqa: F401
    import prompt_tuning.t5.config  # noqa: F401
    import prompt_tuning.t5.network  # noqa: F401
    import prompt_tuning.tasks  # noqa: F401
    from prompt_tuning.train import checkpointing, data, evaluation, loop, optimizers  # noqa: F401


def main(argv=None) -> dict:
    from prompt_tuning.train import loop
    return gin_utils.run_cli(loop.train, argv, __doc__)


if __name__ == "__main__":
    main()
