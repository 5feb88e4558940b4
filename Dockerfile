# syntax=docker/dockerfile:1.7
#
# One image with every Tern binary:
#   /usr/local/bin/tern-ingress, tern-scheduler, tern-delivery-worker,
#   tern-callback-resolver, ternctl
# The Kubernetes Deployments pick the binary with `command:` (see deploy/README.md,
# "The image"). Build from the repository root:
#
#   docker buildx build -t ghcr.io/tern-dev/tern:0.1.0 .
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.
# No protoc (protobuf is compiled with protox) and no OpenSSL (rustls + ring) are
# needed, so the build stage installs no system packages: the C code of ring and
# mimalloc builds with the gcc + libc6-dev that the rust:*-slim images ship.
#
# The build and runtime bases must share a glibc: bookworm builds for
# distroless/cc-debian12 (Debian 12). Moving to trixie means moving both
# (rust:*-slim-trixie + gcr.io/distroless/cc-debian13). Pin digests
# (FROM image:tag@sha256:...) in your release pipeline for reproducible builds.
#
# No HEALTHCHECK: Kubernetes ignores it and uses the probes on the ops port
# (deploy/), and the runtime image has no shell or client to run one with.
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; the Deployments probe /healthz and /readyz, and distroless has no shell or curl to run a check.

# ---------------------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS build

# The binaries that go into the image; every name must be a binary target of a
# workspace member (crates/ternctl must be listed in Cargo.toml's members).
ARG BINARIES="tern-ingress tern-scheduler tern-delivery-worker tern-callback-resolver ternctl"

ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

WORKDIR /src
COPY . .

# --locked: build exactly what Cargo.lock says (fails if it is out of date).
# Only the listed binaries are built (tern-bench and the test crate are not).
# target/ and the cargo registry live in BuildKit cache mounts, so rebuilds reuse
# compiled dependencies; the binaries are copied out of the cache into /out.
RUN --mount=type=cache,id=tern-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=tern-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=tern-target,target=/src/target,sharing=locked \
    set -eu; \
    bins=""; \
    for b in $BINARIES; do bins="$bins --bin $b"; done; \
    cargo build --release --locked $bins; \
    mkdir -p /out; \
    for b in $BINARIES; do install -m 0755 "target/release/$b" "/out/$b"; done; \
    ls -l /out

# ---------------------------------------------------------------------------
# distroless/cc: glibc, libgcc_s, CA certificates, tzdata; no shell, no package
# manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="tern" \
      org.opencontainers.image.description="Tern async-webhook platform: tern-ingress, tern-scheduler, tern-delivery-worker, tern-callback-resolver, ternctl" \
      org.opencontainers.image.source="https://github.com/tern-dev/tern" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/ /usr/local/bin/

# Logs are JSON on stderr in a container; any TERN_* variable overrides the config.
ENV TERN_LOG__FORMAT=json

USER 65532:65532

# Public API, admin API, callback-resolver, and the four ops listeners
# (/healthz, /readyz, /metrics). The services bind 127.0.0.1 unless told otherwise
# (TERN_<SECTION>__LISTEN / __OPS_LISTEN = 0.0.0.0:<port>, as deploy/ does).
EXPOSE 8080 8081 8082 9080 9081 9082 9083

# No ENTRYPOINT: run any binary by name, e.g.
#   docker run --rm IMAGE tern-ingress --config /etc/tern/tern.toml
#   docker run --rm IMAGE ternctl verify --help
CMD ["ternctl", "--help"]
