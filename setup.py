"""Prompt tuning (Lester et al., 2021) on a t5x-compatible JAX/Flax stack."""
import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "clu==0.0.12",
    "tensorboard==2.21.0",  # clu's summary writers
    "sentencepiece==0.2.3",
    "msgpack",
    "safetensors",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
]

EXTRAS_REQUIRE = {
    # pytest-xdist: the README's test command runs the modules on 2 processes (one per core here).
    "test": ["pytest", "pytest-xdist"],
    # Only parity tests and the peer benchmark use these.  torch is always
    # pinned: an unpinned torch pulls a multi-GB CUDA build.
    "torch": ["torch==2.13.0", "transformers>=5,<6", "peft"],
    # t5x's own CLI (gin/t5x_cli, prompt_tuning.t5x_bridge).  t5x itself is not on PyPI: install it from its
    # source with --no-deps beside these (README: Training with t5x's own CLI); its other dependencies are ours.
    "t5x": ["fiddle", "cached-property"],
}

setuptools.setup(
    name="prompt_tuning",
    version="0.1.0",
    description="Prompt tuning for frozen T5 models on JAX/Flax, t5x-compatible.",
    license="Apache-2.0",
    classifiers=["License :: OSI Approved :: Apache Software License", "Programming Language :: Python :: 3"],
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"])
    + ["prompt_tuning.tasks", "prompt_tuning.gin"],
    # tasks/ and gin/ live at the top level (the design card's layout) but
    # install under the package, so nothing imports as a bare `tasks`.
    package_dir={"prompt_tuning.tasks": "tasks", "prompt_tuning.gin": "gin"},
    # The main job's tiny pretrained checkpoint (t5x Orbax) ships with the package.
    package_data={"prompt_tuning.gin": ["**/*.gin"], "prompt_tuning": ["assets/**/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
