# mfsweep image. CPU by default; for GPUs build FROM an nvidia/cuda or pytorch/pytorch base that
# already has a CUDA build of torch (pip keeps it, since it satisfies torch>=2.4).
#   docker build -t mfsweep .
#   docker run --rm -v "$PWD:/work" -w /work mfsweep run studies/rt_sampling.yaml
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 MPLBACKEND=Agg
WORKDIR /opt/mfsweep
COPY pyproject.toml README.md ./
COPY mfsweep ./mfsweep
COPY analysis ./analysis
COPY studies ./studies
RUN pip install . \
    && python -c "import mfsweep, analysis; print('mfsweep', mfsweep.__version__)"
ENTRYPOINT ["mfsweep"]
CMD ["--help"]
