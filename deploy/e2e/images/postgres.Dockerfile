# Stand-in for the official postgres:15 image (Docker Hub is unreachable
# here): Debian's postgresql-15 behind an entrypoint with the official
# image's interface, as far as the compose file uses it — POSTGRES_USER,
# POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (required to initialise), POSTGRES_DB, the data in
# /var/lib/postgresql/data, password (scram-sha-256) logins from anywhere,
# run as the postgres user (uid and gid 999, as there).
ARG BASE=gifts-e2e/debian:bookworm
FROM ${BASE}
# The official image's postgres user: uid and gid 999 (the compose file's tmpfs belongs to them).
RUN groupadd -r postgres --gid=999 && useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql-15 >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
