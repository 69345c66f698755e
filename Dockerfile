# rover: the eBPF profiling agent for Apache SkyWalking, as a node agent image.
#
#   docker build -t rover-ebpf .
#   docker run --rm --pid=host --cap-drop=ALL \
#     --cap-add=BPF --cap-add=PERFMON --cap-add=SYS_PTRACE --cap-add=SYSLOG \
#     --cap-add=DAC_READ_SEARCH -v /:/host:ro -v /sys/kernel/tracing:/sys/kernel/tracing \
#     -e ROVER_HOST_MAPPING=/host rover-ebpf check
#
# Every install step is in scripts/install.sh, which CI runs too
# (tests/test_deploy_install.py): this file only builds the wheel and calls it.

# -- build: the wheel (carries bpf/*.c, bpf/*.h and configs/rover_configs.yaml) ---------------
FROM debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates \
    && python3 -m venv /build-venv
COPY pyproject.toml setup.py MANIFEST.in README.md /src/
COPY rover /src/rover
COPY bpf /src/bpf
COPY configs /src/configs
RUN /build-venv/bin/pip wheel --no-deps --wheel-dir /dist /src

# -- run: Debian packages, the virtualenv, kernel headers -------------------------------------
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY scripts/install.sh /tmp/install.sh
COPY --from=build /dist/ /tmp/dist/
# Headers go where rover looks by default; apt lists, .deb files and the wheel do not stay.
RUN bash /tmp/install.sh --source /tmp/dist/rover_ebpf-*.whl \
        --headers-dir /usr/share/rover/kernel-headers /opt/rover \
    && rm -rf /tmp/install.sh /tmp/dist /var/cache/rover-install \
        /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb
ENV PATH=/opt/rover/bin:$PATH
ENTRYPOINT ["/opt/rover/bin/rover"]
CMD ["agent"]
