# syntax=docker/dockerfile:1
# mfsweep image: the same image runs `mfsweep run` (the driver), the Ray head and the Ray workers.
#
# CUDA (default): a pytorch/pytorch base that already has a CUDA build of torch and torchvision;
# pip keeps them (they are pinned as constraints before mfsweep is installed).
#   docker build -t mfsweep:cuda .
#   docker build --build-arg BASE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime -t mfsweep:cu126 .
# CUDA on a plain Python base: torch comes from the PyTorch wheel index of that CUDA version
# (the wheels bring the CUDA runtime; the host needs only the NVIDIA driver and container toolkit).
#   docker build --build-arg BASE=python:3.11-slim \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t mfsweep:cu128 .
# CPU only:
#   docker build --build-arg BASE=python:3.11-slim \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t mfsweep:cpu .
#
# Run (see docs/cluster.md):
#   docker run --rm --gpus all -v "$PWD:/work" mfsweep:cuda run studies/rt_sampling.yaml
#   docker run -d --gpus all --net=host --shm-size=8g mfsweep:cuda ray start --head --block
#   docker run -d --gpus all --net=host --shm-size=8g mfsweep:cuda ray start --address=HEAD:6379 --block
# The entrypoint (deploy/docker-entrypoint.sh) runs mfsweep for its subcommands and any other
# command (ray, bash, python, mlflow) as given; `--entrypoint ray` works as well.
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

# Used only when the base has no torch: the PyTorch wheel index (cpu, cu126, cu128, ...) and an
# optional version pin, e.g. --build-arg TORCH_VERSION=2.7.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=""
ARG USER_UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MPLBACKEND=Agg

# wget: KubeRay's readiness probes; rsync/openssh-client: the Ray cluster launcher syncs files
RUN if command -v apt-get >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends wget rsync openssh-client \
        && rm -rf /var/lib/apt/lists/*; fi

# torch first (kept from the base when it has one), then pinned so installing mfsweep cannot swap
# the CUDA build for a CPU wheel from PyPI
RUN (python -c "import torch, torchvision" 2>/dev/null \
     || pip install --index-url "${TORCH_INDEX}" "torch${TORCH_VERSION:+==${TORCH_VERSION}}" torchvision) \
    && python -c "from importlib.metadata import version as v; print('torch==' + v('torch')); print('torchvision==' + v('torchvision'))" \
       > /etc/mfsweep-torch.txt \
    && cat /etc/mfsweep-torch.txt

WORKDIR /opt/mfsweep
COPY pyproject.toml README.md ./
COPY mfsweep ./mfsweep
COPY analysis ./analysis
COPY studies ./studies
# ray[default] adds the dashboard and job server the head needs (`ray job submit`, KubeRay RayJob)
RUN pip install -c /etc/mfsweep-torch.txt . "ray[default]" \
    && python -c "import mfsweep, analysis, ray, torch; print('mfsweep', mfsweep.__version__, 'ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
RUN chmod 0755 /usr/local/bin/docker-entrypoint \
    && (useradd --create-home --uid "${USER_UID}" --shell /bin/bash mfsweep \
        || useradd --create-home --shell /bin/bash mfsweep) \
    && mkdir -p /work && chown mfsweep:mfsweep /work

USER mfsweep
WORKDIR /work
ENTRYPOINT ["docker-entrypoint"]
CMD ["--help"]
