# One image for all three daemons (`strata kvstore|executor|scheduler ...`); compose.yaml runs it.
#
#   ./dev image                                     # what the README's compose section runs
#   docker build -t strata:local .                  # CPU image from the indexes (needs a registry)
#   docker build -t strata-cuda \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       --build-arg EXTRAS="[gpu]" .                # CUDA image
#
# Build arguments:
#   BASE_IMAGE     any Debian-based image, with or without Python (default: the official slim
#                  Python image); one made from Debian's packages works where no registry is
#                  reachable (`./dev image` makes one with debootstrap then)
#   TORCH_INDEX    where torch comes from when there is no wheelhouse
#   EXTRAS         "[gpu]" adds cupy for the executor's page copies on CUDA
#   KERNELS_MARCH  the CPU the native kernels are built for at image build: x86-64-v3 (AVX2 +
#                  FMA: any x86 server of the last decade; the default), x86-64-v2, x86-64-v4
#                  (AVX-512), or native (the building host's CPU: an executor on another CPU
#                  then builds its own at its first start)
#
# Python packages come from wheelhouse/ when it holds wheels (`./dev image` fills it with `pip
# download` from this machine's indexes), else from the indexes. The CUDA variant needs no CUDA
# base image: the CUDA torch wheels bring their own CUDA runtime (and triton); the host provides
# only the driver, through the NVIDIA Container Toolkit.
ARG BASE_IMAGE=python:3.12-slim

# Python where the base has none (Debian's, with its headers for the kernel build) and a C++
# compiler (the native CPU kernels; Triton's launchers on CUDA); Strata goes into /opt/venv.
# Its settings come first: every step after a large one copies the image on some storage drivers.
FROM ${BASE_IMAGE} AS runtime
ARG KERNELS_MARCH=x86-64-v3
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    STRATA_DATA_DIR=/data \
    STRATA_EXTENSIONS_DIR=/opt/strata/kernels \
    STRATA_KERNELS_MARCH=${KERNELS_MARCH}
WORKDIR /data
ENTRYPOINT ["strata"]
CMD ["--help"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
       $(command -v python3 >/dev/null || echo python3 python3-venv python3-dev) \
    && rm -rf /var/lib/apt/lists/*

# The build stage: everything that needs the wheels or the sources, none of which ships.
FROM runtime AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""
RUN python3 -m venv /opt/venv

# torch first, in its own layer: it is most of the image and changes far less often than the
# code. `wheelhouse*` matches nothing when there is no wheelhouse (the build still works).
COPY pyproject.toml wheelhouse* /wheelhouse/
RUN if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /wheelhouse "torch==2.13.0"; \
    else \
        pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"; \
    fi

# The gRPC stubs are generated, not committed: generate them inside the installed package
# (from / so that `python -m protos` finds the installed copy, not /src/protos).
WORKDIR /src
COPY . .
RUN if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /wheelhouse ".${EXTRAS}"; \
    else \
        pip install --extra-index-url "${TORCH_INDEX}" ".${EXTRAS}"; \
    fi \
    && cd / && python -m protos \
    && python -c "from protos.v1 import executor_pb2, generation_pb2, kvstore_pb2"

# The native CPU kernels for KERNELS_MARCH, so that no executor start waits on a compiler; and
# the built-in random model (21 MB, ~2 s) at /models/strata-tiny-random, so `docker compose up`
# serves without a download (compose's `models` volume starts as a copy of /models).
RUN python -m kernels \
    && python -c "from pathlib import Path; from executor.default_model import ensure_default_model; \
print(ensure_default_model(Path('/')))"

FROM runtime
COPY --from=build /opt /opt
COPY --from=build /models /models
