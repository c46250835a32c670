# syntax=docker/dockerfile:1
#
# One image with both binaries, selected by command:
#   docker run petmesh                               -> petmesh-node serve (the default)
#   docker run petmesh petmesh-node migrate
#   docker run petmesh petmesh-balancer serve
#
# Build: docker build -t petmesh .   (checked offline by tests/ops/test_image.py: hadolint, and
# the builder stage replayed with `cargo check` in place of `cargo build`.)

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- builder: dependencies first, in a layer of their own --------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# Only the manifests and the lockfile: this layer, and the dependency build below, are reused
# until one of them changes.
COPY Cargo.toml Cargo.lock ./
COPY node/Cargo.toml node/Cargo.toml
COPY balancer/Cargo.toml balancer/Cargo.toml
COPY shared/Cargo.toml shared/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml

# Empty targets where the sources will go (every target a manifest names must exist), then
# build every dependency of the two binaries.
RUN for crate in node balancer shared tests; do \
      mkdir -p "${crate}/src" && echo 'fn main() {}' > "${crate}/src/main.rs" && touch "${crate}/src/lib.rs"; \
    done \
 && mkdir -p balancer/tests && touch balancer/tests/balancer.rs
RUN cargo build --release --locked -p petmesh-node -p petmesh-balancer

# --- builder: the sources ----------------------------------------------------------------------
COPY shared/src shared/src
COPY node/src node/src
COPY balancer/src balancer/src
COPY migrations migrations
# COPY keeps the files' own times, which may be older than the stubs' build: touch them so
# cargo rebuilds the three crates.
RUN find shared/src node/src balancer/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p petmesh-node -p petmesh-balancer

# --- runtime: small, non-root --------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# A fixed uid/gid (10001) so Kubernetes' runAsUser and file ownership agree with the image.
RUN groupadd --system --gid 10001 petmesh \
 && useradd --system --uid 10001 --gid petmesh --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin petmesh
COPY --from=builder /build/target/release/petmesh-node /build/target/release/petmesh-balancer /usr/local/bin/
USER 10001:10001
# 8080: the node's API (or the balancer's proxy); 8081: the balancer's admin API.
EXPOSE 8080 8081
# The node's own /health/live (on server.port); a balancer container overrides it with
# `petmesh-balancer healthcheck` (admin /health), as docker-compose.cluster.yml does.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["petmesh-node", "healthcheck"]
CMD ["petmesh-node", "serve"]
