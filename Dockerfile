# The gifts service. Embedded mode on its own:
#   docker build -t gifts . && docker run -p 8080:8080 -v gifts-data:/var/lib/gifts gifts
# With Tarantool: docker compose up -d (see docker-compose.yml).
#
# The base images are build arguments, so a registry mirror or locally built
# stand-ins can replace them (deploy/e2e/compose.sh does); the defaults are the
# official images.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependency layer: build the dependencies against stub sources, so source
# edits do not rebuild them (bundled SQLite alone takes over a minute). The
# bench files exist only because Cargo.toml names them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates/iproto/Cargo.toml crates/iproto/
RUN mkdir -p src benches crates/iproto/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && echo 'fn main() {}' > benches/load.rs \
    && touch src/lib.rs crates/iproto/src/lib.rs \
    && cargo build --release --locked --bin gifts \
    && rm -rf src crates/iproto/src
# Only what the binary is built from (the sources, the IPROTO client's crate,
# and the analysts' page it embeds): editing tarantool/ or the docs does not rebuild it. The commit
# (for --version and the logs) comes as a build argument, since the build
# context has no .git.
COPY src ./src
COPY crates ./crates
COPY ui ./ui
ARG GIFTS_COMMIT=unknown
RUN touch src/lib.rs src/main.rs crates/iproto/src/lib.rs && cargo build --release --locked --bin gifts

FROM ${RUNTIME_IMAGE}
# One fixed, ordinary (non-system) id for the user and its group, so files in
# a volume keep their owner across images.
RUN groupadd --gid 10001 gifts \
    && useradd --uid 10001 --gid gifts --no-create-home --home-dir /var/lib/gifts \
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
# No VOLUME: the embedded store's volume is named by whoever runs the image
# (-v gifts-data:/var/lib/gifts); the Tarantool stack needs none, and an
# anonymous one would be left behind on every `down`/`up`.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["gifts", "healthcheck"]
ENTRYPOINT ["gifts"]
