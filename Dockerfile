# gpt-api container: a Rust builder stage (cmake for Pingora's zlib-ng) and a slim runtime stage.
# Build: docker build -t gpt-api .      Run: see README ("Operations").
# Lint: hadolint Dockerfile (.ci/run does it). Debian package versions are not pinned (DL3008): bookworm's
# security updates replace them, and a pin would break the build instead.

FROM rust:1-bookworm AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY src ./src
# Built into the binary (include_str!): the shipped price table.
COPY config/prices.yaml ./config/prices.yaml
# The same command as .ci/run's release build.
RUN cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: rustls verifies https backends against the system roots; curl: the HEALTHCHECK.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gpt-api \
    && useradd --system --uid 10001 --gid gpt-api --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin gpt-api
WORKDIR /app
COPY --from=builder /src/target/release/gpt-api /usr/local/bin/gpt-api
COPY conf/gpt-api.yaml /app/conf/gpt-api.yaml
COPY config/config.example.yaml /app/config/config.yaml
# Relative paths in the config resolve under /app: usage.dir "database", logging.dir "logs".
RUN mkdir -p /app/logs /app/database && chown -R 10001:10001 /app
USER 10001:10001
VOLUME ["/app/config", "/app/logs", "/app/database"]
EXPOSE 8000
# Plain HTTP, or HTTPS when server.tls is set (-k: this only checks that the gateway answers).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null http://127.0.0.1:8000/health || curl -fsSk -o /dev/null https://127.0.0.1:8000/health"]
# SIGTERM: Pingora stops accepting, lets requests in flight run for grace_period_seconds (conf/gpt-api.yaml: 120),
# writes the queued usage records and exits. Give `docker stop` more time than that: `docker stop -t 150`,
# `docker run --stop-timeout 150`, or compose's `stop_grace_period: 150s`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gpt-api"]
CMD ["--config", "/app/config/config.yaml", "-c", "/app/conf/gpt-api.yaml"]
