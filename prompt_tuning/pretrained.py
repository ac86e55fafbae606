"""A pretrained T5 with a trained prompt, ready to score and decode: the checkpoint readers plus the prompts.

    model, params = load_pretrained('/path/to/hf_or_t5x_checkpoint', prompt='/path/to/prompt.npy')
    tokens, scores = model.predict_batch(params, {'encoder_input_tokens': tokens}, method='beam')

This sits above `prompt_tuning.checkpoints` (which reads frozen models and knows nothing of prompts) and
`prompt_tuning.prompts` (which reads prompts and may read single arrays from checkpoints).
"""
from typing import Tuple

from prompt_tuning import checkpoints, models, prompts


def load_pretrained(path: str, *, prompt=None, placement: str = "prefix", **kwargs) -> Tuple[models.BaseModel, dict]:
    """(EncoderDecoderModel, params) of the checkpoint at `path`, with `prompt` attached when given.

    `prompt`: an array, a `.npy` file, one of our checkpoints or a PEFT adapter directory (see
    `prompts.read_prompt`), or a list of them of any lengths: a bank, row i = the list's item i, chosen per
    example by the batch's `prompt_index` (each row masked to its own length).  Other keyword arguments go to `checkpoints.load_pretrained` (config, family,
    size, mesh, rules, dtype).
    """
    module, params = checkpoints.load_pretrained(path, **kwargs)
    if prompt is not None:
        module, params = prompts.attach_prompt(module, params, prompt, placement=placement)
    return models.EncoderDecoderModel(module), params
