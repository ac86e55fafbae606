"""seqio tasks and metrics (installed as `prompt_tuning.tasks`).

Importing this package registers every task and mixture with seqio.
"""
