# A Debian host with systemd as PID 1 and Python (for Ansible), to apply the
# playbook's systemd mode to.
ARG BASE=gifts-e2e/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        systemd systemd-sysv dbus python3 sudo curl ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/*
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
