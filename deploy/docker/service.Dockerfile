# syntax=docker/dockerfile:1
# The image of any lineloop service; docker-compose.yml passes each service's build args.
# Build from the repository root, e.g.:
#   docker build -f deploy/docker/service.Dockerfile -t lineloop/ingest \
#     --build-arg SERVICE=ingest --build-arg SETTINGS_PREFIX=LINELOOP_INGEST_ \
#     --build-arg GRPC_PORT=50051 --build-arg METRICS_PORT=9101 .
# training and the compiler also need --build-arg INSTALL_TORCH=true (their packages need torch).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# No defaults: an image built without them would be no service at all.
ARG SERVICE
# The service's settings prefix (lineloop.runtime.settings.service_config); a Dockerfile cannot
# upper-case SERVICE itself, so the build checks the two agree.
ARG SETTINGS_PREFIX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# pipefail: a failing first command of a pipe must fail the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
RUN test -n "${SERVICE}" || { echo "build arg SERVICE is required (ingest, labeling, ...)" >&2; exit 1; } \
    && expected="LINELOOP_$(echo "${SERVICE}" | tr 'a-z-' 'A-Z_')_" \
    && test "${SETTINGS_PREFIX}" = "${expected}" \
    || { echo "build arg SETTINGS_PREFIX must be ${expected} for SERVICE=${SERVICE}" >&2; exit 1; }
RUN python -m venv /opt/lineloop
COPY deploy/constraints.txt deploy/constraints.txt
RUN /opt/lineloop/bin/pip install -c deploy/constraints.txt pip
# torch comes from PyTorch's own index (before the packages, so pip never takes PyPI's CUDA build):
# CPU wheels by default, a CUDA build with e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG INSTALL_TORCH=false
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN if [ "${INSTALL_TORCH}" = true ]; then /opt/lineloop/bin/pip install -c deploy/constraints.txt --index-url "${TORCH_INDEX_URL}" torch; fi
COPY deploy/docker/local_requirements.py deploy/docker/local_requirements.py
COPY libs libs
COPY services/${SERVICE} services/${SERVICE}
# One pip command: the packages name each other (lineloop-runtime, ...), so every local path
# the service needs is given together; non-editable, so the runtime stage needs no sources.
RUN python deploy/docker/local_requirements.py services/${SERVICE} > requirements.local.txt \
    && /opt/lineloop/bin/pip install -c deploy/constraints.txt -r requirements.local.txt
# What a deployment adds on top, e.g. TensorRT for GPU plan builds (deploy/compose/gpu.yml):
#   --build-arg EXTRA_PACKAGES="tensorrt-cu12==10.13.*"
ARG EXTRA_PACKAGES=""
RUN if [ -n "${EXTRA_PACKAGES}" ]; then /opt/lineloop/bin/pip install -c deploy/constraints.txt ${EXTRA_PACKAGES}; fi
# One ENTRYPOINT for every image: exec-form instructions take no build args, so the service's
# console script gets a fixed name (and the build fails if the package declares none).
RUN test -x "/opt/lineloop/bin/lineloop-${SERVICE}" \
    && ln -s "lineloop-${SERVICE}" /opt/lineloop/bin/lineloop-service

FROM ${PYTHON_IMAGE}
ARG SETTINGS_PREFIX
ARG GRPC_PORT
ARG METRICS_PORT
RUN test -n "${GRPC_PORT}" && test -n "${METRICS_PORT}" \
    || { echo "build args GRPC_PORT and METRICS_PORT are required" >&2; exit 1; }
RUN groupadd --system --gid 10001 lineloop \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin lineloop \
    && install -d -o 10001 -g 10001 /data
# Writes go only to /data (state) and /tmp (HOME, caches), so the root filesystem can be read-only.
# Services bind to loopback by default; in a container they must listen on its interfaces.
# LINELOOP_HEALTHCHECK_PORT is for the HEALTHCHECK below, which cannot name ${SETTINGS_PREFIX}GRPC_PORT.
# No RUN after this ENV: hadolint would shellcheck its computed names as unquoted words.
ENV PATH=/opt/lineloop/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LINELOOP_STATE_DIR=/data \
    ${SETTINGS_PREFIX}BIND_HOST=0.0.0.0 \
    ${SETTINGS_PREFIX}GRPC_PORT=${GRPC_PORT} \
    ${SETTINGS_PREFIX}METRICS_PORT=${METRICS_PORT} \
    LINELOOP_HEALTHCHECK_PORT=${GRPC_PORT}
COPY --from=build /opt/lineloop /opt/lineloop
USER 10001:10001
WORKDIR /data
EXPOSE ${GRPC_PORT} ${METRICS_PORT}
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "exec python -m lineloop.runtime.healthcheck \"$LINELOOP_HEALTHCHECK_PORT\""]
ENTRYPOINT ["lineloop-service"]
