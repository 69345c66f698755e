# rover: the eBPF profiling agent for Apache SkyWalking, as a node agent image.
#
# Build (podman or Docker; on a Debian 12 host without a registry, scripts/build-image.sh
# installs podman, makes the debian:bookworm-slim base from Debian's mirrors and builds):
#   podman build -t rover-ebpf:0.1.0 .        # or: docker build -t rover-ebpf:0.1.0 .
#
# Run as the DaemonSet runs it; `docker run` takes the same flags as `podman run`:
#   podman run --rm --pid=host \
#     --cap-drop=ALL --cap-add=BPF --cap-add=PERFMON --cap-add=SYS_PTRACE \
#     --cap-add=SYSLOG --cap-add=DAC_READ_SEARCH --cap-add=CHECKPOINT_RESTORE \
#     --security-opt seccomp=unconfined --security-opt no-new-privileges \
#     --read-only --tmpfs /tmp \
#     -v /:/host:ro,rslave -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
#     rover-ebpf:0.1.0 check --host-root /host
# (`agent` instead of `check ...`, with -e ROVER_HOST_MAPPING=/host -e ROVER_BACKEND_ADDR=...)
#   --pid=host            the host's processes: discovery scans them, BPF filters host pids
#   --cap-drop/--cap-add  only the capabilities profiling needs (docs/deploy.md, per kernel)
#   seccomp=unconfined    runtimes' default profiles refuse bpf() and perf_event_open()
#                         without CAP_SYS_ADMIN (podman on Debian 12, Docker before 23)
#   no-new-privileges     as allowPrivilegeEscalation: false
#   --read-only --tmpfs /tmp   rover writes only temporary files
#   -v /:/host:ro,rslave  the host's /proc and kernel headers; mounts made later show up
#   -v .../tracing:ro     the sched_switch tracepoint (off-CPU)
# On a host where podman's defaults fail (crun under hybrid cgroups, open-file limits below
# what rootful podman asks for), scripts/podman.sh is podman with settings that work.
#
# Every install step is in scripts/install.sh, which CI also runs on a host
# (tests/test_deploy_install.py); CI builds this file and runs the image as the DaemonSet
# does (tests/test_image.py). Sizes per layer: docs/deploy.md.

# -- build: the wheel (carries bpf/*.c, bpf/*.h and configs/rover_configs.yaml) ---------------
FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates \
    && python3 -m venv /build-venv
COPY pyproject.toml setup.py MANIFEST.in README.md /src/
COPY rover /src/rover
COPY bpf /src/bpf
COPY configs /src/configs
RUN /build-venv/bin/pip wheel --no-deps --wheel-dir /dist /src
# (scripts/build-image.sh finds this stage's older images by it, to remove them)
LABEL rover-ebpf.stage=build

# -- run --------------------------------------------------------------------------------------
FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Debian packages (bcc, LLVM, Python) and kernel headers: a layer of their own, which a change
# to rover's code does not rebuild. Headers go where rover looks by default.
COPY scripts/install.sh /tmp/install.sh
RUN bash /tmp/install.sh --system-only --headers-dir /usr/share/rover/kernel-headers /opt/rover \
    && rm -rf /tmp/install.sh /var/cache/rover-install /var/lib/apt/lists/* \
        /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/cache/debconf/*-old \
        /var/log/apt /var/log/dpkg.log
# rover's virtualenv, pruned of what it never runs in the same step (a file deleted in a
# later step would still be in this layer).
COPY scripts/install.sh scripts/prune-venv.sh /tmp/
COPY --from=build /dist/ /tmp/dist/
RUN bash /tmp/install.sh --source /tmp/dist/rover_ebpf-*.whl --kernel-series "" \
        --headers-dir /usr/share/rover/kernel-headers /opt/rover \
    && bash /tmp/prune-venv.sh /opt/rover/venv \
    && rm -rf /tmp/install.sh /tmp/prune-venv.sh /tmp/dist /root/.cache
ENV PATH=/opt/rover/bin:$PATH
ENTRYPOINT ["/opt/rover/bin/rover"]
CMD ["agent"]
