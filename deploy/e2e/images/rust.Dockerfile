# Stand-in for rust:1.95-slim-bookworm (Docker Hub is unreachable here):
# the Debian base plus a C toolchain, this machine's own Rust toolchain
# (rustc, cargo, the x86_64 standard library) and its CA bundle, so cargo can
# reach crates.io through this network's TLS-inspecting proxy.
ARG BASE=gifts-e2e/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain/ /usr/local/rust/
ENV PATH=/usr/local/rust/bin:$PATH \
    CARGO_HOME=/usr/local/cargo
RUN rustc --version && cargo --version
