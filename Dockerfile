# vLLM + LMCache serving appliance: one image, configured by environment variables (docs/ENVIRONMENT.md).
#
#   docker build -t local/llm-appliance .              # the product image (last stage, the default target)
#   docker run --gpus all --ipc host --ulimit memlock=-1 --stop-timeout 90 -p 8000:8000 local/llm-appliance
#
# Versions are pinned in ONE place, entrypoint/versions.env; every step that installs or checks a version
# reads that file. Upgrading = change versions.env, the BASE_IMAGE tag and the PINNED_* label defaults below
# (the build and tests/container/test_static_checks.py fail if they disagree), rebuild, run the contract tests.
#
# Stages: base (runtime tools, user, volumes, labels) -> wheel (the appliance package, pyproject.toml) ->
# test (stub vLLM and LMCache servers, for CPU-only CI: docker/build-image.sh test) -> product (vLLM, torch and
# LMCache from versions.env, then the package; the build fails if LMCache's compiled ops do not load or the
# schema cannot be generated). `test` comes before `product` because the classic builder builds every stage
# above its --target. Layers go from the rarely changed to the often changed: a change to the entrypoint
# package rebuilds only the wheel, the small layer that installs it and the schema layer above it.

# The vLLM image whose vLLM, torch and CUDA match versions.env (vLLM 0.32.0, torch 2.13.0+cu130, CUDA 13).
# A plain CUDA 13 image works too: vLLM and torch are then installed from versions.env.
ARG BASE_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${BASE_IMAGE} AS base
ARG BASE_IMAGE
# Image labels only; Docker cannot read a file into a LABEL, so these repeat versions.env and the build
# checks that they agree. No ARG here is named VLLM_*, LMCACHE_* or APPLIANCE_*: BuildKit hands a stage's
# ARGs to the RUN steps of the stages built on it, and `entrypoint check` rejects unknown names there.
ARG PINNED_VLLM=0.32.0
ARG PINNED_LMCACHE=0.5.6
ARG PINNED_TORCH=2.13.0
ARG PINNED_CUDA=13.0
# The non-root option: `docker run --user appliance ...` (group 0, so an arbitrary `--user UID:0` works too).
ARG NONROOT_UID=10001

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY entrypoint/versions.env /opt/appliance/versions.env
RUN for pin in "VLLM_VERSION=$PINNED_VLLM" "LMCACHE_VERSION=$PINNED_LMCACHE" \
               "TORCH_VERSION=$PINNED_TORCH" "CUDA_VERSION=$PINNED_CUDA"; do \
        grep -qx "$pin" /opt/appliance/versions.env || { \
            echo "error: the Dockerfile's label default $pin differs from entrypoint/versions.env;" \
                 "change the PINNED_* defaults together with versions.env" >&2; exit 1; }; \
    done

# tini reaps zombies and forwards signals as PID 1 (the vLLM image has none). The Python dependencies
# (supervisor, python-dotenv, requests) come with the appliance package, from pyproject.toml, in the final
# stages. DL3008: no apt version pin for tini: the base image fixes the distribution release (Ubuntu for
# vLLM's image, Debian for CI's), and a version string valid in one is unknown in the other.
# hadolint ignore=DL3008
RUN if ! command -v tini >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid "$NONROOT_UID" --gid 0 --create-home --shell /bin/bash appliance \
    && mkdir -p /run/appliance /var/lib/appliance/hf-cache /var/lib/appliance/kv-disk \
    && chown -R "$NONROOT_UID:0" /run/appliance /var/lib/appliance \
    && chmod -R g=u /run/appliance /var/lib/appliance

# The model cache lives next to the disk tier rather than in /root/.cache, so that root and the
# `appliance` user share it; mount a volume there to keep downloads across containers.
ENV HF_HOME=/var/lib/appliance/hf-cache \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/appliance/hf-cache", "/var/lib/appliance/kv-disk"]
# 8000: the API (VLLM_PORT); 9464: the LMCache server's and the appliance's metrics (APPLIANCE_METRICS_PORT).
EXPOSE 8000 9464

LABEL org.opencontainers.image.title="llm-appliance" \
      org.opencontainers.image.description="vLLM + LMCache serving appliance, configured by environment variables" \
      org.opencontainers.image.base.name="$BASE_IMAGE" \
      appliance.vllm.version="$PINNED_VLLM" \
      appliance.lmcache.version="$PINNED_LMCACHE" \
      appliance.torch.version="$PINNED_TORCH" \
      appliance.cuda.version="$PINNED_CUDA"

# The start period covers a model download and load (APPLIANCE_STARTUP_TIMEOUT, 900 s by default); failures
# during it do not count, a success ends it. The check asks vLLM and the LMCache server over loopback.
HEALTHCHECK --start-period=900s --interval=15s --timeout=10s --retries=3 \
    CMD ["python3", "-m", "entrypoint", "healthcheck"]
# tini -g: a `docker stop` reaches the whole foreground process group. `serve` validates, runs the preflight
# checks and starts supervisord; flags after `serve` override the environment; any other command runs as given.
ENTRYPOINT ["tini", "-g", "--", "python3", "-m", "entrypoint"]
CMD ["serve"]


# The appliance package as a wheel (pyproject.toml), built once for both final stages. The base image's
# setuptools builds it (--no-build-isolation: no download, and no network needed to rebuild after an edit).
FROM base AS wheel
COPY pyproject.toml /src/pyproject.toml
COPY entrypoint /src/entrypoint
RUN python3 -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels /src


# CI only: stub servers stand in for vLLM and LMCache (they need CUDA), with the same command lines.
FROM base AS test
# Runtime dependencies first, in their own layer: it changes with pyproject.toml only. PIP_BREAK_SYSTEM_PACKAGES:
# like the vLLM image itself, the appliance installs into the system Python (which Ubuntu 24.04 based images
# mark as externally managed). The same two steps are in the product stage.
COPY pyproject.toml /tmp/appliance/pyproject.toml
RUN python3 -c 'import tomllib; print(*tomllib.load(open("/tmp/appliance/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /tmp/appliance/requirements.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -r /tmp/appliance/requirements.txt \
    && rm -rf /tmp/appliance
COPY docs /opt/appliance/docs
COPY env /opt/appliance/env
COPY --from=wheel /wheels /tmp/wheels
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY tests/stubs /opt/appliance/stubs
COPY docker/test-stage/vllm docker/test-stage/lmcache /usr/local/bin/
# The stubs need no GPU: this turns off serve's "no GPU visible" preflight check (supervise/preflight.py).
ENV STUB_NO_GPU=1
# The upgrade drill (tests/container/test_upgrade.py) builds this stage as two releases: STACK_PINS rewrites
# the pins the installed entrypoint and the stubs read, e.g. "VLLM_VERSION=0.26.0 LMCACHE_VERSION=0.5.3".
ARG STACK_PINS=""
RUN pins=$(python3 -c 'import entrypoint, pathlib; print(pathlib.Path(entrypoint.__file__).parent / "versions.env")') \
    && for pin in $STACK_PINS; do \
           grep -q "^${pin%%=*}=" "$pins" || { echo "error: no pin ${pin%%=*}" >&2; exit 1; }; \
           sed -i "s/^${pin%%=*}=.*/${pin}/" "$pins" /opt/appliance/versions.env; \
       done \
    && python3 -m entrypoint check
# Per-build labels come last in each final stage: a new revision must not invalidate the layers above.
# docker/build-image.sh passes pyproject.toml's version and Source URL, the commit and the date.
ARG IMAGE_VERSION=dev
ARG IMAGE_REVISION=""
ARG IMAGE_CREATED=""
ARG IMAGE_SOURCE=""
LABEL org.opencontainers.image.version="$IMAGE_VERSION" \
      org.opencontainers.image.revision="$IMAGE_REVISION" \
      org.opencontainers.image.created="$IMAGE_CREATED" \
      org.opencontainers.image.source="$IMAGE_SOURCE" \
      appliance.version="$IMAGE_VERSION" \
      appliance.variant="test: stub vLLM and LMCache servers, not for serving"


FROM base AS product
# vLLM, torch and LMCache, all from PyPI, whose torch and vLLM wheels for these versions are CUDA 13 builds
# (no extra index: where one is unreachable, pip retries it for every package). On the vLLM image pip keeps
# what already matches. LMCache's compiled ops are built against one torch version; what is installed must
# be what versions.env says.
# `import lmcache.c_ops` alone proves little: LMCache 0.5.3 answers it with a shim that falls back to torch
# when the compiled module does not load (and always on a build machine without a GPU). So the compiled
# c_ops.*.so is also loaded directly (RTLD_NOW: every torch symbol resolved), which fails on a torch/CUDA
# mismatch and works without a GPU (checked with torch 2.11.0+cu130, no visible GPU: 64 symbols).
RUN . /opt/appliance/versions.env \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir \
           "vllm==$VLLM_VERSION" "torch==$TORCH_VERSION" "lmcache==$LMCACHE_VERSION" \
    && found=$(python3 -c 'import importlib.metadata as m, torch; print(m.version("vllm"), m.version("lmcache"), torch.__version__.split("+")[0], torch.version.cuda)') \
    && echo "installed: vllm lmcache torch cuda = $found" \
    && if [ "$found" != "$VLLM_VERSION $LMCACHE_VERSION $TORCH_VERSION $CUDA_VERSION" ]; then \
           echo "error: installed versions ($found) differ from entrypoint/versions.env" \
                "($VLLM_VERSION $LMCACHE_VERSION $TORCH_VERSION $CUDA_VERSION)" >&2; \
           exit 1; \
       fi
# The appliance's runtime dependencies, then the package (as in the test stage).
COPY pyproject.toml /tmp/appliance/pyproject.toml
RUN python3 -c 'import tomllib; print(*tomllib.load(open("/tmp/appliance/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /tmp/appliance/requirements.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -r /tmp/appliance/requirements.txt \
    && rm -rf /tmp/appliance
COPY docs /opt/appliance/docs
COPY env /opt/appliance/env
COPY --from=wheel /wheels /tmp/wheels
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
# The schema the entrypoint validates against, generated from the installed vLLM and LMCache (this
# overwrites the committed copy in the installed package); then the default configuration must validate.
# `entrypoint.check_lmcache_ops` loads every compiled LMCache module (cuda_ops, lmcache_native, ...) with
# RTLD_NOW: every torch symbol resolved, no GPU needed; it fails on a torch/LMCache mismatch, which
# `import lmcache` alone does not show (scripts/check-lmcache-torch-abi.py: LMCache 0.5.3 needs torch 2.11,
# 0.5.4-0.5.6 need torch 2.13).
RUN python3 -m entrypoint.check_lmcache_ops \
    && python3 -m entrypoint.generators.schema \
    && python3 -m entrypoint check
# Set by the build, as in the test stage (docker/build-image.sh; `docker compose build` leaves them "dev").
ARG IMAGE_VERSION=dev
ARG IMAGE_REVISION=""
ARG IMAGE_CREATED=""
ARG IMAGE_SOURCE=""
LABEL org.opencontainers.image.version="$IMAGE_VERSION" \
      org.opencontainers.image.revision="$IMAGE_REVISION" \
      org.opencontainers.image.created="$IMAGE_CREATED" \
      org.opencontainers.image.source="$IMAGE_SOURCE" \
      appliance.version="$IMAGE_VERSION" \
      appliance.variant="product"
