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
]

# Optional ready-made eval sets (data/tfds_source.py); reading needs no TensorFlow.
TFDS = ["tensorflow-datasets>=4.9.9,<5", "importlib_resources>=6,<8"]

EXTRAS = {
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "scikit-image>=0.24,<0.27",  # real sample photos for the inference tests
        "jax[tpu]>=0.10.2,<0.11",  # libtpu: the AOT pod-compile tests (compile only, no TPU needed)
        "matplotlib>=3.8,<4",  # tools/sweep.py --report draws scaling.png
        *TFDS,
    ],
    "tfds": TFDS,
    "sweep": ["matplotlib>=3.8,<4"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
    # torch 2.13.0 is the CPU wheel this machine serves offline; torchvision
    # is pinned with it so pip does not pull a multi-GB CUDA build.
    "hf": [
        "torch==2.13.0",
        "transformers>=4.57,<6",
    ],
}

setuptools.setup(
    name="openvision2",
    version="0.1.0",
    description="OpenVision 2: captioning-only generative pretraining of vision encoders (JAX/Flax).",
    packages=setuptools.find_packages(include=["openvision2", "openvision2.*"]),
    package_data={"openvision2": ["assets/*"]},
    python_requires=">=3.11",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
