#!/usr/bin/env bash
# A three-node PostgreSQL cluster managed by Patroni, with one etcd, on
# loopback ports of this machine: the harness of the failover test, and a way
# to try the HA topology by hand.
#
#   deploy/ha/cluster.sh up DIR [BASE_PORT]   start everything; print the app's URL
#   deploy/ha/cluster.sh down DIR             stop everything `up` started in DIR
#   deploy/ha/cluster.sh status DIR           patronictl list
#   deploy/ha/cluster.sh url DIR              the app's URL again
#   deploy/ha/cluster.sh kill-postgres DIR NODE   kill -9 NODE's PostgreSQL (a crash)
#   deploy/ha/cluster.sh kill-node DIR NODE       kill -9 NODE's Patroni and PostgreSQL (a lost machine)
#   deploy/ha/cluster.sh start-node DIR NODE      start NODE's Patroni again (it rejoins)
#   deploy/ha/cluster.sh wait-whole DIR           wait until one leader, a synchronous standby and a replica
#
# DIR holds all state (etcd, the three data directories, logs, pids,
# generated passwords); it is created if missing. Ports: BASE_PORT (default
# 25400) is etcd's client port, +1 its peer port, +10..+12 PostgreSQL of
# node1..node3, +20..+22 their Patroni REST APIs. Needs the Debian packages
# patroni, etcd-server and postgresql. As root, Patroni and PostgreSQL run as
# the `postgres` user (PostgreSQL refuses root).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || {
    sed -n '6,13p' "$0" | sed 's/^# \{0,3\}//' >&2
    exit 2
}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
nodes=(node1 node2 node3)

as_owner() {
    # PostgreSQL (and so Patroni) may not run as root.
    # setpriv execs (runuser would stay as a parent and SIGKILL Patroni two
    # seconds after a SIGTERM, before it has stopped PostgreSQL).
    if [ "$(id -u)" = 0 ]; then
        HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

pg_bin_dir() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -x "$bin/postgres" ] || {
        echo "no PostgreSQL server programs in /usr/lib/postgresql/*/bin (apt-get install postgresql)" >&2
        exit 1
    }
    echo "$bin"
}

secret() {
    head -c 18 /dev/urandom | base64 | tr -d '/+='
}

# Polls `$@` for up to $1 seconds (the rest is the command).
wait_for() {
    local limit=$1
    shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out after ${limit} s waiting for: $*" >&2
            return 1
        fi
        sleep 0.2
    done
}

# The cluster as Patroni's REST API of node $1 sees it (JSON).
cluster_json() {
    curl -fsS --max-time 2 "http://127.0.0.1:$(($(cat "$dir/base-port") + 20 + $1))/cluster"
}

# True once one leader runs and two replicas follow it on its timeline with
# no lag, one of them synchronous.
whole() {
    local json
    json=$(cluster_json 0 || cluster_json 1 || cluster_json 2) || return 1
    python3 - "$json" <<'PY'
import json, sys
members = json.loads(sys.argv[1])["members"]
leaders = [m for m in members if m["role"] == "leader" and m["state"] == "running"]
replicas = [m for m in members if m["role"] in ("replica", "sync_standby") and m["state"] in ("streaming", "running")]
sync = [m for m in members if m["role"] == "sync_standby"]
caught_up = all(m.get("lag") == 0 and m.get("timeline") == leaders[0].get("timeline") for m in replicas) if leaders else False
sys.exit(0 if len(leaders) == 1 and len(replicas) == 2 and sync and caught_up else 1)
PY
}

up() {
    local base=${1:-25400}
    local bin
    bin=$(pg_bin_dir)
    command -v patroni >/dev/null && command -v etcd >/dev/null || {
        echo "needs patroni and etcd (apt-get install patroni etcd-server)" >&2
        exit 1
    }
    if [ -f "$dir/etcd.pid" ]; then
        echo "$dir already has a cluster (cluster.sh down $dir first)" >&2
        exit 1
    fi
    echo "$base" >"$dir/base-port"
    [ -f "$dir/app-password" ] || secret >"$dir/app-password"
    [ -f "$dir/superuser-password" ] || secret >"$dir/superuser-password"
    [ -f "$dir/replication-password" ] || secret >"$dir/replication-password"
    cp "$here/post-bootstrap.sh" "$dir/post-bootstrap.sh"
    mkdir -p "$dir/etcd"
    local i=0
    for node in "${nodes[@]}"; do
        mkdir -p "$dir/$node"
        sed -e "s|@NAME@|$node|g" -e "s|@DIR@|$dir|g" -e "s|@BIN_DIR@|$bin|g" \
            -e "s|@ETCD_PORT@|$base|g" \
            -e "s|@PG_PORT@|$((base + 10 + i))|g" -e "s|@REST_PORT@|$((base + 20 + i))|g" \
            -e "s|@SUPERUSER_PASSWORD@|$(cat "$dir/superuser-password")|g" \
            -e "s|@REPLICATION_PASSWORD@|$(cat "$dir/replication-password")|g" \
            "$here/patroni.yml.in" >"$dir/$node/patroni.yml"
        i=$((i + 1))
    done
    chmod 700 "$dir"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"

    start_all "$base" || {
        echo "the cluster did not come up; stopping what started" >&2
        tail -n 20 "$dir"/node*/patroni.log >&2 || true
        down
        exit 1
    }
    url
}

start_all() {
    local base=$1
    # etcd: one member; its own session, so `down` stops it and nothing else.
    setsid etcd --name etcd1 --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$base" \
        --advertise-client-urls "http://127.0.0.1:$base" \
        --listen-peer-urls "http://127.0.0.1:$((base + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((base + 1))" \
        --initial-cluster "etcd1=http://127.0.0.1:$((base + 1))" \
        --log-level warn </dev/null >"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    wait_for 30 curl -fsS "http://127.0.0.1:$base/health" || return 1

    for node in "${nodes[@]}"; do
        start_node "$node"
        # The first node bootstraps; the others copy it once it leads.
        if [ "$node" = node1 ]; then
            wait_for 60 curl -fsS "http://127.0.0.1:$((base + 20))/primary" || return 1
        fi
    done
    wait_for 90 whole
}

start_node() {
    local node=$1
    # Patroni in a session of its own (PostgreSQL detaches into another), in
    # the state directory: its helper processes return to the working
    # directory, which the postgres user may not be able to enter.
    cd "$dir"
    setsid bash -c "$(declare -f as_owner); as_owner patroni '$dir/$node/patroni.yml'" \
        </dev/null >>"$dir/$node/patroni.log" 2>&1 &
    echo $! >"$dir/$node/patroni.pid"
}

# The app's URL: every node, and only a read-write session will do.
url() {
    local base
    base=$(cat "$dir/base-port")
    echo "postgres://gifts:$(cat "$dir/app-password")@127.0.0.1:$((base + 10)),127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12))/gifts?target_session_attrs=read-write"
}

# Sends signal $2 to session $1: a process and everything it started in its session.
kill_session() {
    local sid=$1 signal=$2
    pkill "-$signal" -s "$sid" 2>/dev/null || true
}

postmaster_pid() {
    head -n 1 "$dir/$1/data/postmaster.pid" 2>/dev/null
}

# Sends signal $2 to node $1's PostgreSQL, all of it: Patroni starts it in
# a session of its own, so that it outlives a Patroni restart.
signal_postgres() {
    local pid sid
    pid=$(postmaster_pid "$1") || return 0
    sid=$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ') || return 0
    [ -n "$sid" ] && kill_session "$sid" "$2"
}

# True while anything of node $1 runs.
node_alive() {
    local pid
    pid=$(cat "$dir/$1/patroni.pid" 2>/dev/null) && pgrep -s "$pid" >/dev/null && return 0
    pid=$(postmaster_pid "$1") && kill -0 "$pid" 2>/dev/null
}

nothing_alive() {
    local node
    for node in "${nodes[@]}"; do
        ! node_alive "$node" || return 1
    done
}

down() {
    local node pid
    # Patroni stops its PostgreSQL (a fast shutdown) when told to stop.
    for node in "${nodes[@]}"; do
        pid=$(cat "$dir/$node/patroni.pid" 2>/dev/null) && kill_session "$pid" TERM
    done
    wait_for 30 nothing_alive || true
    for node in "${nodes[@]}"; do
        pid=$(cat "$dir/$node/patroni.pid" 2>/dev/null) && kill_session "$pid" KILL
        signal_postgres "$node" KILL
        rm -f "$dir/$node/patroni.pid"
    done
    pid=$(cat "$dir/etcd.pid" 2>/dev/null) && {
        kill_session "$pid" TERM
        wait_for 10 bash -c "! pgrep -s $pid" || kill_session "$pid" KILL
        rm -f "$dir/etcd.pid"
    }
    true
}

# The node named by $1, checked.
node_arg() {
    case "${1:-}" in
    node1 | node2 | node3) echo "$1" ;;
    *)
        echo "which node? node1, node2 or node3" >&2
        exit 2
        ;;
    esac
}

case "$cmd" in
up) up "${3:-}" ;;
down) down ;;
status) as_owner patronictl -c "$dir/node1/patroni.yml" list ;;
url) url ;;
kill-postgres)
    # The postmaster only, as a crash would: its children notice and exit.
    node=$(node_arg "${3:-}")
    pid=$(postmaster_pid "$node") && kill -KILL "$pid" || {
        echo "$node has no PostgreSQL running" >&2
        exit 1
    }
    ;;
kill-node)
    node=$(node_arg "${3:-}")
    kill_session "$(cat "$dir/$node/patroni.pid")" KILL
    signal_postgres "$node" KILL
    rm -f "$dir/$node/patroni.pid"
    ;;
start-node)
    node=$(node_arg "${3:-}")
    [ ! -f "$dir/$node/patroni.pid" ] || {
        echo "$node is running (kill-node first)" >&2
        exit 1
    }
    start_node "$node"
    ;;
wait-whole)
    wait_for 120 whole
    ;;
*)
    echo "unknown command $cmd (up, down, status, url, kill-postgres, kill-node, start-node, wait-whole)" >&2
    exit 2
    ;;
esac
