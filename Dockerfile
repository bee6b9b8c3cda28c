# One image holding the three binaries (producer, worker, reducer); the command chooses.
#   docker build -t chunkflow .
#   docker run --rm chunkflow producer --help
#
# Build stage: the Rust toolchain, release build of the workspace's binaries.
FROM rust:1-bookworm AS build
# cmake and clang: aws-lc-sys (rustls' crypto provider, through lapin) builds C code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p producer -p worker -p reducer \
 && mkdir -p /out \
 && cp target/release/producer target/release/worker target/release/reducer /out/

# Runtime stage: a slim Debian with CA certificates and an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/chunkflow chunkflow
COPY --from=build /out/ /usr/local/bin/
USER chunkflow:chunkflow
WORKDIR /home/chunkflow
ENV RUST_LOG=info
# Workers and reducers serve /metrics, /healthz and /readyz here when
# CHUNKFLOW_METRICS_ADDR is set (docker-compose.yml sets 0.0.0.0:9090).
EXPOSE 9090
STOPSIGNAL SIGTERM
CMD ["worker"]
