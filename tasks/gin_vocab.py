"""The vocabularies of prompt_tuning.vocab as gin configurables, for the prompt inits that tokenize text.

class_labels and from_text tokenize with the tasks' SentencePiece vocabulary unless told otherwise; a model
with another vocabulary names its own, e.g. for ByT5 or the synthetic tiny model (byte vocabulary):
    prompt_init/prompts.class_labels.vocab = @vocab.byte_vocabulary()
"""
import gin

from prompt_tuning import vocab

GIN_MODULE = "prompt_tuning.vocab"

byte_vocabulary = gin.external_configurable(vocab.byte_vocabulary, module=GIN_MODULE)
t5_vocabulary = gin.external_configurable(vocab.t5_vocabulary, module=GIN_MODULE)
mt5_vocabulary = gin.external_configurable(vocab.mt5_vocabulary, module=GIN_MODULE)
