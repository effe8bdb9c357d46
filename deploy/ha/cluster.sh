#!/usr/bin/env bash
# A three-node PostgreSQL cluster managed by Patroni, with three etcd
# members, on loopback ports of this machine: the harness of the failover
# test, and a way to try the HA topology by hand.
#
#   deploy/ha/cluster.sh install                  Patroni (pinned, requirements.txt) into a virtual environment
#   deploy/ha/cluster.sh up DIR [BASE_PORT]       start everything; print the app's URL
#   deploy/ha/cluster.sh down DIR                 stop everything `up` started in DIR
#   deploy/ha/cluster.sh status DIR               patronictl list
#   deploy/ha/cluster.sh url DIR [NODE...]        the app's URL again (hosts in this order)
#   deploy/ha/cluster.sh kill-postgres DIR NODE   kill -9 NODE's PostgreSQL (a crash)
#   deploy/ha/cluster.sh kill-node DIR NODE       kill -9 NODE's Patroni and PostgreSQL (a lost machine)
#   deploy/ha/cluster.sh start-node DIR NODE      start NODE's Patroni again (it rejoins)
#   deploy/ha/cluster.sh freeze-node DIR NODE SECONDS [postgres|patroni|all]
#                                                 stop NODE's processes (SIGSTOP), then resume them (a stall)
#   deploy/ha/cluster.sh freeze-etcd DIR SECONDS  stop every etcd member, then resume them
#   deploy/ha/cluster.sh switchover DIR           a planned switchover to the synchronous standby
#   deploy/ha/cluster.sh wait-whole DIR           wait until one leader, a synchronous standby and a replica
#
# DIR holds all state (etcd, the three data directories, logs, pids,
# generated passwords); it is created if missing. Ports: BASE_PORT (default
# 25400) and +2, +4 are the etcd members' client ports, +1, +3, +5 their
# peer ports; +10..+12 PostgreSQL of node1..node3, +20..+22 their Patroni
# REST APIs. Needs the Debian packages etcd-server, postgresql, curl and
# python3-venv; Patroni comes from PyPI (`install`, run by `up` when
# needed), pinned in requirements.txt beside this script, into
# $GIFTS_HA_VENV (default /opt/gifts-ha/patroni-VERSION as root, else
# ~/.cache/gifts-ha/patroni-VERSION). As root, Patroni and PostgreSQL run as
# the `postgres` user (PostgreSQL refuses root).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}
dir=${2:-}
usage() {
    sed -n '6,20p' "$0" | sed 's/^# \{0,3\}//' >&2
    exit 2
}
[ -n "$cmd" ] || usage
nodes=(node1 node2 node3)

# Patroni: the pinned version, in a virtual environment the postgres user
# can read (Debian's python3, not a per-user one under /root).
patroni_version=$(sed -n 's/^patroni==//p' "$here/requirements.txt")
# The oldest Patroni without the leader-key overwrite (patroni PR #2689).
patroni_minimum=3.0.3
if [ -n "${GIFTS_HA_VENV:-}" ]; then
    venv=$GIFTS_HA_VENV
elif [ "$(id -u)" = 0 ]; then
    venv=/opt/gifts-ha/patroni-$patroni_version
else
    venv=${XDG_CACHE_HOME:-$HOME/.cache}/gifts-ha/patroni-$patroni_version
fi

install() {
    if [ -x "$venv/bin/patroni" ] && [ "$("$venv/bin/patroni" --version)" = "patroni $patroni_version" ]; then
        echo "patroni $patroni_version in $venv"
        return 0
    fi
    [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || {
        echo "needs Debian's python3 with venv (apt-get install python3-venv)" >&2
        exit 1
    }
    echo "installing Patroni $patroni_version into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        --requirement "$here/requirements.txt"
    chmod -R a+rX "$venv"
    echo "$("$venv/bin/patroni" --version) in $venv"
}

# Refuses a Patroni older than the fix the cluster's safety rests on.
check_patroni() {
    local version
    version=$("$venv/bin/patroni" --version 2>/dev/null | sed -n 's/^patroni //p')
    [ -n "$version" ] || {
        echo "no Patroni in $venv (deploy/ha/cluster.sh install)" >&2
        exit 1
    }
    if [ "$(printf '%s\n%s\n' "$patroni_minimum" "$version" | sort -V | head -n 1)" != "$patroni_minimum" ]; then
        echo "Patroni $version in $venv is older than $patroni_minimum: it can overwrite the leader key and lose acknowledged writes (patroni PR #2689); refusing to start" >&2
        exit 1
    fi
}

if [ "$cmd" = install ]; then
    install
    exit 0
fi
[ -n "$dir" ] || usage
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

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
    command -v etcd >/dev/null && command -v curl >/dev/null || {
        echo "needs etcd and curl (apt-get install etcd-server curl)" >&2
        exit 1
    }
    install >&2
    check_patroni
    if [ -f "$dir/etcd1.pid" ]; then
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
            -e "s|@ETCD_HOSTS@|127.0.0.1:$base,127.0.0.1:$((base + 2)),127.0.0.1:$((base + 4))|g" \
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
    # etcd: three members (a majority survives the loss of one), each in a
    # session of its own, so that `down` and `freeze-etcd` reach it and
    # nothing else.
    local members="" m
    for m in 1 2 3; do
        members+="${members:+,}etcd$m=http://127.0.0.1:$((base + 2 * m - 1))"
    done
    for m in 1 2 3; do
        mkdir -p "$dir/etcd$m"
        setsid etcd --name "etcd$m" --data-dir "$dir/etcd$m" \
            --listen-client-urls "http://127.0.0.1:$((base + 2 * m - 2))" \
            --advertise-client-urls "http://127.0.0.1:$((base + 2 * m - 2))" \
            --listen-peer-urls "http://127.0.0.1:$((base + 2 * m - 1))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((base + 2 * m - 1))" \
            --initial-cluster "$members" --initial-cluster-token "gifts-$base" \
            --log-level warn </dev/null >"$dir/etcd$m.log" 2>&1 &
        echo $! >"$dir/etcd$m.pid"
    done
    for m in 1 2 3; do
        wait_for 30 curl -fsS "http://127.0.0.1:$((base + 2 * m - 2))/health" || return 1
    done

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
    setsid bash -c "$(declare -f as_owner); as_owner '$venv/bin/patroni' '$dir/$node/patroni.yml'" \
        </dev/null >>"$dir/$node/patroni.log" 2>&1 &
    echo $! >"$dir/$node/patroni.pid"
}

# The app's URL: every node (in the order given, node1..node3 by default),
# and only a read-write session will do.
url() {
    local base hosts="" node
    base=$(cat "$dir/base-port")
    [ $# -gt 0 ] || set -- "${nodes[@]}"
    for node in "$@"; do
        node=$(node_arg "$node")
        hosts+="${hosts:+,}127.0.0.1:$((base + 10 + ${node#node} - 1))"
    done
    echo "postgres://gifts:$(cat "$dir/app-password")@$hosts/gifts?target_session_attrs=read-write"
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
# a session of its own, so that it outlives a Patroni restart, and each
# backend calls setsid() (a session of its own too), so the postmaster's
# children are signalled one by one.
signal_postgres() {
    local pid sid
    pid=$(postmaster_pid "$1") || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if [ "$2" = CONT ]; then
        pkill -CONT -P "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true
        return 0
    fi
    # The postmaster first: stopped, it starts no new backend meanwhile.
    kill "-$2" "$pid" 2>/dev/null || true
    pkill "-$2" -P "$pid" 2>/dev/null || true
    sid=$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')
    [ -z "$sid" ] || kill_session "$sid" "$2"
}

# Sends signal $2 to node $1's Patroni (its session: Patroni and helpers).
signal_patroni() {
    local pid
    pid=$(cat "$dir/$1/patroni.pid" 2>/dev/null) || return 0
    kill_session "$pid" "$2"
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
        # A frozen node (an interrupted freeze-node) is resumed to be stopped.
        signal_postgres "$node" CONT
        pid=$(cat "$dir/$node/patroni.pid" 2>/dev/null) && {
            kill_session "$pid" CONT
            kill_session "$pid" TERM
        }
    done
    wait_for 30 nothing_alive || true
    for node in "${nodes[@]}"; do
        pid=$(cat "$dir/$node/patroni.pid" 2>/dev/null) && kill_session "$pid" KILL
        signal_postgres "$node" KILL
        rm -f "$dir/$node/patroni.pid"
    done
    for m in 1 2 3; do
        pid=$(cat "$dir/etcd$m.pid" 2>/dev/null) && {
            kill_session "$pid" CONT
            kill_session "$pid" TERM
            wait_for 10 bash -c "! pgrep -s $pid" || kill_session "$pid" KILL
            rm -f "$dir/etcd$m.pid"
        }
    done
    true
}

# The number of seconds in $1, checked.
seconds_arg() {
    case "${1:-}" in
    '' | *[!0-9]*)
        echo "how many seconds? a whole number" >&2
        exit 2
        ;;
    *) echo "$1" ;;
    esac
}

# Stops ($2 = STOP) or resumes (CONT) what $3 names of node $1.
signal_node() {
    case "$3" in
    postgres) signal_postgres "$1" "$2" ;;
    patroni) signal_patroni "$1" "$2" ;;
    all)
        signal_patroni "$1" "$2"
        signal_postgres "$1" "$2"
        ;;
    esac
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
status) as_owner "$venv/bin/patronictl" -c "$dir/node1/patroni.yml" list ;;
url)
    shift 2
    url "$@"
    ;;
freeze-node)
    # A stall, as a VM pause or an I/O hang: every process stopped, then
    # resumed as it was. Resumed even if this script is interrupted.
    node=$(node_arg "${3:-}")
    seconds=$(seconds_arg "${4:-}")
    what=${5:-postgres}
    case "$what" in
    postgres | patroni | all) ;;
    *)
        echo "freeze what? postgres, patroni or all" >&2
        exit 2
        ;;
    esac
    trap 'signal_node "$node" CONT "$what"' EXIT
    signal_node "$node" STOP "$what"
    echo "stopped $what of $node for $seconds s"
    sleep "$seconds"
    ;;
freeze-etcd)
    seconds=$(seconds_arg "${3:-}")
    resume_etcd() {
        for m in 1 2 3; do
            kill_session "$(cat "$dir/etcd$m.pid")" CONT
        done
    }
    trap resume_etcd EXIT
    for m in 1 2 3; do
        kill_session "$(cat "$dir/etcd$m.pid")" STOP
    done
    echo "stopped etcd for $seconds s"
    sleep "$seconds"
    ;;
switchover)
    # To the synchronous standby (the only candidate Patroni accepts in
    # synchronous mode), at once.
    leader=$(cluster_json 0 || cluster_json 1 || cluster_json 2)
    candidate=$(python3 -c 'import json,sys; print(next(m["name"] for m in json.loads(sys.argv[1])["members"] if m["role"] == "sync_standby"))' "$leader")
    as_owner "$venv/bin/patronictl" -c "$dir/node1/patroni.yml" switchover --candidate "$candidate" --force
    ;;
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
    echo "unknown command $cmd (install, up, down, status, url, kill-postgres, kill-node, start-node, freeze-node, freeze-etcd, switchover, wait-whole)" >&2
    exit 2
    ;;
esac
