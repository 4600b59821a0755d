# sparse_coding on a GPU server. Build and run from the repo root:
#   docker build -t sparse-coding .
#   mkdir -p run ~/.cache/huggingface     # create both first: a missing host folder is created as root
#   cp sparse_coding/config/central_config.yaml run/config.yaml   # edit it
#   docker run --gpus all --rm -e HF_TOKEN --user "$(id -u):$(id -g)" \
#     -v ~/.cache/huggingface:/cache/huggingface -v "$PWD/run:/work" \
#     sparse-coding [pipe|fast|val|hist] [--help]
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/run:/work" sparse-coding demo   # into run/demo
# /work holds your config.yaml and (with DATA_DIR: "data" in it) the graphs, owned
# by you; the package's own sparse_coding/config stays inside the image.
# transformers 5 needs torch >= 2.6; pick another CUDA build with --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    SPARSE_CODING_WORK=/work

# graphs/render.py draws graphs with Graphviz' `dot` (the Ubuntu package of the base image).
# hadolint ignore=DL3008
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
RUN pip install --no-deps -e . && python3 -c "import sparse_coding.cli" \
    && install -m 0755 docker/entrypoint.sh /usr/local/bin/sparse-coding-entrypoint

# A non-root user; `--user "$(id -u):$(id -g)"` runs as you instead, so that what
# lands in the mounted /work is yours. Both folders are writable by any user.
RUN (id -u 1000 >/dev/null 2>&1 || useradd --create-home --uid 1000 sparse) \
    && mkdir -p /work /cache/huggingface \
    && chmod 0777 /work /cache/huggingface
USER 1000:1000
WORKDIR /work

ENTRYPOINT ["sparse-coding-entrypoint"]
CMD ["fast"]
