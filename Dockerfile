# syntax=docker/dockerfile:1
# The gifts service. Embedded mode on its own:
#   docker build -t gifts . && docker run -p 8080:8080 -v gifts-data:/var/lib/gifts gifts
# With Tarantool: docker compose up -d (see docker-compose.yml).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependency layer: build the dependencies against stub sources, so source
# edits do not rebuild them (bundled SQLite alone takes over a minute).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && echo 'fn main() {}' > benches/load.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin gifts \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY tarantool ./tarantool
RUN touch src/lib.rs src/main.rs && cargo build --release --locked --bin gifts

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/gifts \
        --shell /usr/sbin/nologin gifts \
    && mkdir -p /var/lib/gifts \
    && chown gifts:gifts /var/lib/gifts
COPY --from=build /src/target/release/gifts /usr/local/bin/gifts
USER gifts
WORKDIR /var/lib/gifts
ENV GIFTS_LISTEN=0.0.0.0:8080 \
    GIFTS_STORAGE=sqlite:/var/lib/gifts/gifts.db \
    RUST_LOG=info
EXPOSE 8080
VOLUME ["/var/lib/gifts"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["gifts", "healthcheck"]
ENTRYPOINT ["gifts"]
