"""Soft prompts: the parameter, its initializers, how it joins the input, banks, loading, PEFT."""
from prompt_tuning.prompts.checkpoint_io import read_prompt, read_prompt_bank, read_prompt_checkpoint
from prompt_tuning.prompts.initializers import (class_labels, from_array, from_checkpoint, from_file, from_npy,
                                                from_text, sampled_vocab, uniform)
from prompt_tuning.prompts.join import PLACEMENTS, joined_mask, prompt_positions
from prompt_tuning.prompts.peft import load_peft_prompt, save_peft_prompt
from prompt_tuning.prompts.processor import PromptProcessor, processor_factory, select_prompts
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.prompts.attach import attach_prompt, prompt_factory
