# Stand-in for tarantool/tarantool:2.11 (Docker Hub is unreachable here):
# Debian's tarantool package (2.6) with the upstream image's user and paths —
# a `tarantool` user, data in /var/lib/tarantool, applications in
# /opt/tarantool — and root as the default user, as upstream (whose
# entrypoint steps down; ours sets USER itself).
ARG BASE=gifts-e2e/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        tarantool >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/tarantool /opt/tarantool \
    && chown tarantool:tarantool /var/lib/tarantool
WORKDIR /opt/tarantool
CMD ["tarantool"]
