"""A T5 encoder-decoder in flax.linen with t5x's parameter and logical-axis names."""
