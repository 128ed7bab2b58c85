# syntax=docker/dockerfile:1.7
#
# One image, both binaries: /usr/local/bin/handover-operator and /usr/local/bin/handover-sidecar.
# Both are on PATH; the entrypoint is the sidecar (the image runs in every pool pod). The injected
# sidecar names its command (`handover-sidecar run`) and the chart starts the operator with
# `command: [handover-operator]`, so neither depends on the entrypoint.
#
#   docker build -t handover:0.1.0 .
#   docker run --rm handover:0.1.0 --help                                   # the sidecar
#   docker run --rm --entrypoint handover-operator handover:0.1.0 --help    # the operator
#
# Build arguments: RUST_VERSION (the toolchain; the workspace needs >= 1.90, edition 2024), PGO
# (true: the sidecar built with a profile of its own run, below; false: a plain release build), the
# builder base (BUILDER_IMAGE, rust:<RUST_VERSION>-slim-bookworm by default) and the runtime base
# (RUNTIME_IMAGE). tests/image/build.sh builds both bases locally and passes them here. Builder
# and runtime are both Debian 12 (bookworm): the binaries link glibc dynamically (rustls with
# ring: no OpenSSL), so the runtime's glibc must be at least the builder's.

ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
# Only what the build reads (see .dockerignore): the workspace manifests, the crates (the sidecar
# binary links the data path, dataplane/, and the lab, lab/, for `demo-app`), and the checked-in
# CRD (a unit test of the operator include_str!s it; the build itself does not need it).
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crds/ crds/
COPY common/ common/
COPY operator/ operator/
COPY dataplane/ dataplane/
COPY lab/ lab/
COPY sidecar/ sidecar/
# The end-to-end suite and the operator's scale bench are workspace members: cargo reads their
# manifests, but does not build them.
COPY tests/e2e/Cargo.toml tests/e2e/Cargo.toml
COPY tests/e2e/src/ tests/e2e/src/
COPY tests/bench/Cargo.toml tests/bench/Cargo.toml
COPY tests/bench/src/ tests/bench/src/
# The sidecar is built with profile-guided optimization (PGO, the default; PGO=false skips it):
# tests/bench/pgo.sh builds it instrumented, drives it on loopback through the bench's kinds of
# requests (the demo app behind it, curl in front, every answer checked), and builds it again
# with that profile: ~14 % fewer instructions a request at 100 B (tests/bench/README.md). It
# costs two more whole-program builds of the sidecar (~10 minutes on two cores) when the sidecar's
# sources changed; the last one is kept in the target/ cache mount under the hash of its inputs, so
# a build whose sidecar did not change (the operator's, the tests') uses it again.
ARG PGO=true
COPY tests/bench/pgo.sh tests/bench/lib.sh tests/bench/
# What PGO needs beyond the toolchain, fetched when missing: curl, and an llvm-profdata of rustc's
# LLVM (rustup's llvm-tools in the rust images; Debian's llvm-<major> without rustup).
RUN if [ "$PGO" = true ]; then tests/bench/pgo.sh --get-tools; fi
# The `dist` profile (Cargo.toml): release with whole-program LTO, without debug info, symbols
# stripped. Panic messages keep their file:line; backtraces lose function names.
ENV CARGO_TERM_COLOR=never
# Cache mounts: the registry, git checkouts and target/ survive between builds (BuildKit), so a
# source change rebuilds only the workspace crates (the PGO build, all of the sidecar's: its
# profile is new). target/ is a cache, so the binaries are copied out of it in the same step.
RUN --mount=type=cache,id=handover-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=handover-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=handover-target,target=/src/target,sharing=locked \
    cargo build --profile dist --locked -p handover-operator \
 && install -D -m 0755 target/dist/handover-operator /out/handover-operator \
 && if [ "$PGO" = true ]; then \
      HANDOVER_CACHE=/src/target/handover tests/bench/pgo.sh /out/handover-sidecar; \
    else \
      cargo build --profile dist --locked -p handover-sidecar \
      && install -D -m 0755 target/dist/handover-sidecar /out/handover-sidecar; \
    fi \
 && /out/handover-operator --version \
 && /out/handover-sidecar --version

# distroless/cc: glibc, libgcc_s, CA certificates, tzdata, /etc/passwd with nonroot (65532); no
# shell, no package manager. Swap for debian:bookworm-slim (add USER below as well) when a shell
# is wanted for debugging.
FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/handover-operator /out/handover-sidecar /usr/local/bin/
# Numeric, so that runAsNonRoot can be verified by the kubelet without a runAsUser.
USER 65532:65532
# Sidecar data port, sidecar admin port (/live, /ready, /metrics), operator /metrics /healthz /readyz.
EXPOSE 8000 9901 8080
ENTRYPOINT ["/usr/local/bin/handover-sidecar"]
CMD ["--help"]
LABEL org.opencontainers.image.title="handover" \
      org.opencontainers.image.description="Sessions that survive pod death: the handover operator and sidecar (one image, two entrypoints)" \
      org.opencontainers.image.licenses="Apache-2.0"
