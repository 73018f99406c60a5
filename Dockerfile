# gpt-api container: a Rust builder stage (cmake for Pingora's zlib-ng) and a slim runtime stage.
FROM rust:1-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app gpt-api
WORKDIR /app
COPY --from=builder /src/target/release/gpt-api /usr/local/bin/gpt-api
COPY conf/gpt-api.yaml /app/conf/gpt-api.yaml
COPY config/config.example.yaml /app/config/config.yaml
RUN mkdir -p /app/logs /app/database && chown -R gpt-api /app
USER gpt-api
VOLUME ["/app/config", "/app/logs", "/app/database"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8000/health || exit 1
# SIGTERM: Pingora stops accepting and drains in-flight requests before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gpt-api"]
CMD ["--config", "/app/config/config.yaml", "-c", "/app/conf/gpt-api.yaml"]
