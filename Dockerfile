# One image for all three daemons (`strata kvstore|executor|scheduler ...`); compose.yaml runs it.
#
#   docker build -t strata .                        # CPU image (default)
#   docker build -t strata-cuda \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       --build-arg EXTRAS="[gpu]" .                # CUDA image
#
# The CUDA variant needs no CUDA base image: the CUDA torch wheels bring their own CUDA runtime
# (and triton, which the paged kernels use on CUDA); the host provides only the driver, through
# the NVIDIA Container Toolkit. EXTRAS="[gpu]" adds cupy for the executor's page copies.
FROM python:3.12-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STRATA_DATA_DIR=/data \
    STRATA_EXTENSIONS_DIR=/cache/torch_extensions

# A C++ compiler: the executor builds its native CPU kernels for the host's own CPU at first
# start (-march=native: they cannot be built into the image; compose keeps the build in a volume),
# and Triton compiles its kernel launchers on CUDA hosts. Without one the CPU forward falls back
# to the slower torch forms.
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

# torch first, in its own layer: it is most of the image and changes far less often than the code.
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"

# The gRPC stubs are generated, not committed: generate them inside the installed package
# (from / so that `python -m protos` finds the installed copy, not /src/protos).
WORKDIR /src
COPY . .
RUN pip install --extra-index-url "${TORCH_INDEX}" ".${EXTRAS}" \
    && cd / && python -m protos \
    && python -c "from protos.v1 import executor_pb2, generation_pb2, kvstore_pb2" \
    && rm -rf /src

# The built-in random model (21 MB, ~2 s) at /models/strata-tiny-random, so `docker compose up`
# serves without a download; compose's `models` volume starts as a copy of /models.
RUN python -c "from pathlib import Path; from executor.default_model import ensure_default_model; \
print(ensure_default_model(Path('/')))"

WORKDIR /data
ENTRYPOINT ["strata"]
CMD ["--help"]
