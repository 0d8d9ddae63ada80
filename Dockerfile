# syntax=docker/dockerfile:1
# shutoff's three binaries in one image: shutoff-api (default command),
# shutoff-worker and shutoff-admin. Used by docker-compose.yml.

# ---- build ----
FROM rust:1-bookworm AS builder
# libvirt-dev: the worker's and the admin tool's libvirt:/// driver (the
# `libvirt` feature) links libvirt's client library.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep crates.io downloads and compiled dependencies between
# builds; the binaries are copied out because the target mount is not kept.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shutoff-api -p shutoff-worker -p shutoff-admin \
        --features shutoff-worker/libvirt,shutoff-admin/libvirt \
 && install -D -m 0755 -t /out \
        target/release/shutoff-api target/release/shutoff-worker target/release/shutoff-admin

# ---- run ----
FROM debian:bookworm-slim
# curl serves the compose healthchecks (GET /readyz); libvirt0 is the
# client library the libvirt driver links (the daemon is the host's own,
# reached through its socket, /var/run/libvirt/libvirt-sock, mounted in).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libvirt0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --uid 10001 shutoff
COPY --from=builder /out/ /usr/local/bin/
USER shutoff
ENV SHUTOFF_LISTEN=0.0.0.0:8774 \
    SHUTOFF_HEALTH_LISTEN=0.0.0.0:8775 \
    RUST_LOG=info,sqlx=warn,lapin=warn
# 8774: the API (Nova's port). 8775: a worker's /healthz and /readyz.
EXPOSE 8774 8775
CMD ["shutoff-api"]
