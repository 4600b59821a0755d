# sparse_coding on a GPU server. Build and run from the repo root:
#   docker build -t sparse-coding .
#   docker run --gpus all -e HF_TOKEN \
#     -v ~/.cache/huggingface:/root/.cache/huggingface \
#     -v $PWD/sparse_coding/data:/app/sparse_coding/data \
#     -v $PWD/sparse_coding/config:/app/sparse_coding/config \
#     sparse-coding                                  # fast.py; or append: python3 sparse_coding/pipe.py
# transformers 5 needs torch >= 2.6; pick another CUDA build with --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/root/.cache/huggingface

# graphs/render.py draws graphs with Graphviz' `dot`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends graphviz \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from setup.py alone, so that code edits reuse this layer.
COPY setup.py pyproject.toml ./
RUN mkdir sparse_coding && touch sparse_coding/__init__.py \
    && pip install -e . \
    && rm -rf sparse_coding

COPY . .
RUN pip install --no-deps -e . && python3 -c "import sparse_coding.cli"

CMD ["python3", "sparse_coding/fast.py"]
