# One image for all four services: `docker run IMAGE serve vision|audio|decoder|gateway ...`,
# or `up` for the whole stack in one container. See docker-compose.yml.
#
# torch comes from TORCH_INDEX_URL first, so the deployer picks the build: the default is the
# CPU wheel; for NVIDIA GPUs pass a CUDA index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t autoglm-serve .
# TORCH_VERSION must match the pin in pyproject.toml (a local tag such as +cu128 still matches).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AUTOGLM_HOST=0.0.0.0 \
    AUTOGLM_BUNDLE=/models/default

# A C++ compiler: on a CPU with AMX the decoder builds its fused int4 GEMM at start-up
# (services/decoder/int4_amx.py); without one it falls back to a slower path. Debian's g++ of
# the base image's release, whatever its patch level.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .

# Run unprivileged; /models is where the bundle volume mounts and /secrets the internal token's
# (a named volume takes the ownership of its directory the first time it is mounted).
RUN useradd --create-home --uid 1000 autoglm && mkdir /models /secrets \
    && chown autoglm /models /secrets && chmod 700 /secrets
USER 1000
WORKDIR /home/autoglm

# Only the gateway's port: `docker run -P` must not publish the model services' ports (under
# `up` they listen on loopback; compose and Kubernetes reach them on their own networks).
EXPOSE 8000
ENTRYPOINT ["autoglm"]
CMD ["up"]
