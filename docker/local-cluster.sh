#!/usr/bin/env bash
# A two-node Ray cluster and an MLflow server on this machine, without Docker: the same shape as
# docker/compose.yaml, for trying `tunetl run --address` before a real cluster.
#   docker/local-cluster.sh start   # Ray head + one worker (--num-cpus=1) + MLflow on 127.0.0.1
#   docker/local-cluster.sh stop    # stops exactly what start started, by the process groups it saved
# Settings (environment): TUNETL_LOCAL_DIR (state, default ./.tunetl_local), TUNETL_VENV (default
# <repo>/.venv), RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), MLFLOW_PORT (5000), HEAD_CPUS (1).
# Ray token auth stays on: start writes a random token to $TUNETL_LOCAL_DIR/ray_token (mode 600).
# Each service runs under setsid in its own process group, so `stop` ends it and every child it
# spawned (raylet, GCS, MLflow's workers) and never touches other Ray or MLflow processes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TUNETL_LOCAL_DIR:-$PWD/.tunetl_local}"
VENV="${TUNETL_VENV:-$REPO/.venv}"
RAY_PORT="${RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
HEAD_CPUS="${HEAD_CPUS:-1}"
SERVICES=(mlflow ray-head ray-worker)

die() { echo "local-cluster: $*" >&2; exit 1; }

# Start "$@" in a new session; its PID is also its process-group id.
spawn() {
    local name="$1"; shift
    setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
    echo $! >"$STATE/$name.pid"
}

alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 -- "-$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_for() {
    local what="$1" tries="$2"; shift 2
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "$what did not come up in ${tries} s; see the logs in $STATE, then run: $0 stop"
}

# setsid needs a program, not a shell function: `env` sets Ray's auth variables for each command.
ray_cmd() { RAY=(env RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/ray_token" "$VENV/bin/ray"); }

two_nodes() {
    local alive_nodes
    alive_nodes="$("${RAY[@]}" status --address="127.0.0.1:$RAY_PORT" | grep -c ' node_')" || return 1
    (( alive_nodes >= 2 ))
}

start() {
    [[ -x "$VENV/bin/ray" && -x "$VENV/bin/mlflow" ]] \
        || die "no ray/mlflow in $VENV/bin; install the project there or set TUNETL_VENV"
    mkdir -p "$STATE"
    for s in "${SERVICES[@]}"; do
        if alive "$s"; then die "$s already running (pid file $STATE/$s.pid); run: $0 stop"; fi
    done
    if [[ ! -s "$STATE/ray_token" ]]; then
        (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))' >"$STATE/ray_token")
    fi

    spawn mlflow "$VENV/bin/mlflow" server --backend-store-uri "sqlite:///$STATE/mlflow.db" \
        --artifacts-destination "$STATE/mlartifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
    ray_cmd
    spawn ray-head "${RAY[@]}" start --head --block --node-ip-address=127.0.0.1 \
        --port="$RAY_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" \
        --num-cpus="$HEAD_CPUS" --temp-dir="$STATE/ray"
    wait_for "Ray head" 60 "${RAY[@]}" status --address="127.0.0.1:$RAY_PORT"
    spawn ray-worker "${RAY[@]}" start --block --address="127.0.0.1:$RAY_PORT" \
        --node-ip-address=127.0.0.1 --num-cpus=1
    wait_for "MLflow server" 90 "$VENV/bin/python" -c \
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)"
    wait_for "Ray worker" 60 two_nodes

    cat <<MSG
Ray head 127.0.0.1:$RAY_PORT (dashboard http://127.0.0.1:$RAY_DASHBOARD_PORT), one worker with 1 CPU,
MLflow http://127.0.0.1:$MLFLOW_PORT. Logs and state: $STATE. Run a search on it with:

  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$STATE/ray_token \\
    $VENV/bin/tunetl run experiments/quickstart.yaml --address 127.0.0.1:$RAY_PORT \\
    --tracking-uri http://127.0.0.1:$MLFLOW_PORT --storage $STATE/storage

then: $0 stop
MSG
}

# Ray puts each worker process in a process group of its own: find them as descendants of the group.
descendants() {
    local pgid="$1" pid ppid group
    local -A keep=()
    while read -r pid ppid group; do
        [[ "$group" == "$pgid" ]] && keep[$pid]=1
    done < <(ps -eo pid=,ppid=,pgid=)
    local grew=1
    while ((grew)); do
        grew=0
        while read -r pid ppid; do
            if [[ -n "${keep[$ppid]:-}" && -z "${keep[$pid]:-}" ]]; then keep[$pid]=1; grew=1; fi
        done < <(ps -eo pid=,ppid=)
    done
    echo "${!keep[@]}"
}

stop() {
    local s pgid pid extra
    for s in ray-worker ray-head mlflow; do
        [[ -f "$STATE/$s.pid" ]] || continue
        pgid="$(cat "$STATE/$s.pid")"
        read -r -a extra <<<"$(descendants "$pgid")"
        kill -TERM -- "-$pgid" "${extra[@]}" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 -- "-$pgid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 -- "-$pgid" 2>/dev/null; then
            echo "local-cluster: $s (process group $pgid) ignored SIGTERM; sending SIGKILL" >&2
            kill -KILL -- "-$pgid" 2>/dev/null || true
        fi
        for pid in "${extra[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        rm -f "$STATE/$s.pid"
        echo "stopped $s (process group $pgid)"
    done
    # A Ray worker forked while the raylet was going down can be left behind, re-parented to init;
    # its command line names this cluster's session directory, which no other process does.
    for pid in $(pgrep -f -- "$STATE/ray/" || true); do
        kill -KILL "$pid" 2>/dev/null && echo "stopped leftover Ray process $pid"
    done
    true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
