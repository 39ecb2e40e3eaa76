#!/usr/bin/env bash
# The team stack on one machine, on loopback: PostgreSQL, a Prefect server, an MLflow tracking
# server with proxied artifacts, a DVC remote (a directory, or S3 through moto's S3 API server),
# and a Dask scheduler with two workers.
#
#   deploy/stack.sh up        start what is not running; write $STACK_DIR/stack.env
#   deploy/stack.sh status    one line per service: up or down, and where
#   deploy/stack.sh down      stop what `up` started (PostgreSQL only if `up` started it)
#   deploy/stack.sh destroy   down, then drop the stack's databases and delete $STACK_DIR
#
# Point a workspace (any shell) at the stack:   source "$STACK_DIR/stack.env"
# Settings (environment; defaults in brackets):
#   STACK_DIR [deploy/.stack]   state: pid files, logs, the artifact store, the DVC remote
#   STACK_NAME [unlearnflow]    prefix of the PostgreSQL databases (<name>_prefect, <name>_mlflow)
#   STACK_S3 [0]                1: the DVC remote is s3://unlearnflow on moto's S3 server
#   STACK_PREFECT_PORT [4200] STACK_MLFLOW_PORT [5000] STACK_S3_PORT [5900] STACK_DASK_PORT [8786]
#   STACK_PG_CLUSTER ["15 main"]  the Debian PostgreSQL cluster (started with pg_ctlcluster if down)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STACK_BIN:-$REPO/.venv/bin}
DIR=$(mkdir -p "${STACK_DIR:-$REPO/deploy/.stack}" && cd "${STACK_DIR:-$REPO/deploy/.stack}" && pwd)
NAME=${STACK_NAME:-unlearnflow}
PREFECT_PORT=${STACK_PREFECT_PORT:-4200}
MLFLOW_PORT=${STACK_MLFLOW_PORT:-5000}
S3_PORT=${STACK_S3_PORT:-5900}
DASK_PORT=${STACK_DASK_PORT:-8786}
S3=${STACK_S3:-0}
read -r PG_VERSION PG_CLUSTER <<<"${STACK_PG_CLUSTER:-15 main}"
PG_PORT=$(pg_conftool -s "$PG_VERSION" "$PG_CLUSTER" show port 2>/dev/null || echo 5432)
PG_USER=$NAME
PG_PASSWORD_FILE=$DIR/pg.password
export DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1

say() { echo "stack: $*"; }
die() { echo "stack: error: $*" >&2; exit 1; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
psql_admin() { as_postgres psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtAc "$1"; }
pid_alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

pg_up() { pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; }

start_postgres() {
  command -v pg_ctlcluster >/dev/null || die "PostgreSQL is not installed (Debian: apt-get install postgresql-15)"
  if ! pg_up; then
    say "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
    touch "$DIR/postgres.started-by-stack"
  fi
  [ -f "$PG_PASSWORD_FILE" ] || { (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$PG_PASSWORD_FILE"); }
  local pw; pw=$(cat "$PG_PASSWORD_FILE")
  if [ -z "$(psql_admin "select 1 from pg_roles where rolname = '$PG_USER'")" ]; then
    psql_admin "create role \"$PG_USER\" login password '$pw'"
  else
    psql_admin "alter role \"$PG_USER\" password '$pw'"
  fi
  for db in "${NAME}_prefect" "${NAME}_mlflow"; do
    [ -n "$(psql_admin "select 1 from pg_database where datname = '$db'")" ] ||
      as_postgres createdb -p "$PG_PORT" -O "$PG_USER" "$db"
  done
}

pg_url() { echo "$1://$PG_USER:$(cat "$PG_PASSWORD_FILE")@127.0.0.1:$PG_PORT/$2"; }

# spawn NAME CMD...: start a service in its own session, log and pid in $DIR
spawn() {
  local name=$1; shift
  if pid_alive "$name"; then say "$name already running (pid $(cat "$DIR/$name.pid"))"; return; fi
  setsid "$@" >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
}

# wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds; on timeout show the log's tail
wait_for() {
  local name=$1 budget=$2; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" || { tail -n 20 "$DIR/$name.log" >&2; die "$name exited during start-up (log: $DIR/$name.log)"; }
    (( SECONDS - t0 < budget )) || { tail -n 20 "$DIR/$name.log" >&2; die "$name not ready after ${budget}s (log: $DIR/$name.log)"; }
    sleep 0.5
  done
  say "$name ready after $((SECONDS - t0))s"
}

http_ok() { "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1"; }
dask_workers() {  # the scheduler answers and has $1 workers
  "$BIN/python" - "$1" "tcp://127.0.0.1:$DASK_PORT" <<'EOF'
import sys
from distributed import Client
with Client(sys.argv[2], timeout=3) as c:
    sys.exit(0 if len(c.scheduler_info()["workers"]) >= int(sys.argv[1]) else 1)
EOF
}

write_env() {
  local remote="$DIR/dvc-remote"
  [ "$S3" = 1 ] && remote="s3://unlearnflow"
  {
    echo "# written by deploy/stack.sh up: source this file to point unlearnflow at the stack"
    echo "export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api"
    echo "export UNLEARNFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    echo "export UNLEARNFLOW_DASK_ADDRESS=tcp://127.0.0.1:$DASK_PORT"
    echo "export UNLEARNFLOW_DVC_REMOTE=$remote"
    if [ "$S3" = 1 ]; then
      echo "export UNLEARNFLOW_DVC_REMOTE_ENDPOINT=http://127.0.0.1:$S3_PORT"
      echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
    fi
  } > "$DIR/stack.env"
}

up() {
  start_postgres
  mkdir -p "$DIR/artifacts" "$DIR/dvc-remote" "$DIR/prefect-home"
  spawn prefect env PREFECT_HOME="$DIR/prefect-home" \
    PREFECT_API_DATABASE_CONNECTION_URL="$(pg_url postgresql+asyncpg "${NAME}_prefect")" \
    "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  spawn mlflow "$BIN/mlflow" server --backend-store-uri "$(pg_url postgresql+psycopg2 "${NAME}_mlflow")" \
    --serve-artifacts --artifacts-destination "$DIR/artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
  if [ "$S3" = 1 ]; then
    spawn s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
  fi
  spawn dask-scheduler "$BIN/dask" scheduler --host 127.0.0.1 --port "$DASK_PORT" --no-dashboard
  wait_for prefect 120 http_ok "http://127.0.0.1:$PREFECT_PORT/api/health"
  # workers run flow tasks: they talk to this Prefect server, not a temporary one of their own
  for w in 1 2; do
    spawn "dask-worker-$w" env PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api" \
      "$BIN/dask" worker "tcp://127.0.0.1:$DASK_PORT" --name "worker-$w" --nworkers 1 --nthreads 1 --no-dashboard
  done
  wait_for mlflow 120 http_ok "http://127.0.0.1:$MLFLOW_PORT/health"
  if [ "$S3" = 1 ]; then
    wait_for s3 60 http_ok "http://127.0.0.1:$S3_PORT/moto-api/"
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$BIN/python" - "http://127.0.0.1:$S3_PORT" <<'EOF'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
if "unlearnflow" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket="unlearnflow")
EOF
  fi
  wait_for dask-worker-2 120 dask_workers 2
  write_env
  say "up; point a workspace at it with: source $DIR/stack.env"
}

status() {
  local rc=0
  if pg_up; then say "postgres        up    127.0.0.1:$PG_PORT (databases ${NAME}_prefect, ${NAME}_mlflow)"
  else say "postgres        down"; rc=1; fi
  for svc in prefect mlflow s3 dask-scheduler dask-worker-1 dask-worker-2; do
    [ "$svc" = s3 ] && [ "$S3" != 1 ] && ! [ -f "$DIR/s3.pid" ] && continue
    if pid_alive "$svc"; then printf 'stack: %-15s up    pid %s, log %s\n' "$svc" "$(cat "$DIR/$svc.pid")" "$DIR/$svc.log"
    else printf 'stack: %-15s down\n' "$svc"; rc=1; fi
  done
  [ -f "$DIR/stack.env" ] && say "env             $DIR/stack.env"
  return $rc
}

stop_service() {
  local name=$1
  pid_alive "$name" || { rm -f "$DIR/$name.pid"; return 0; }
  local pid; pid=$(cat "$DIR/$name.pid")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$DIR/$name.pid"
  say "$name stopped"
}

down() {
  for svc in dask-worker-1 dask-worker-2 dask-scheduler s3 mlflow prefect; do stop_service "$svc"; done
  if [ -f "$DIR/postgres.started-by-stack" ]; then
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop && say "PostgreSQL stopped (up had started it)"
    rm -f "$DIR/postgres.started-by-stack"
  fi
}

destroy() {
  local started=0
  [ -f "$DIR/postgres.started-by-stack" ] && started=1
  for svc in dask-worker-1 dask-worker-2 dask-scheduler s3 mlflow prefect; do stop_service "$svc"; done
  if pg_up; then
    for db in "${NAME}_prefect" "${NAME}_mlflow"; do as_postgres dropdb -p "$PG_PORT" --if-exists "$db"; done
    psql_admin "drop role if exists \"$PG_USER\""
    [ "$started" = 1 ] && pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop && say "PostgreSQL stopped (up had started it)"
  fi
  rm -rf "$DIR"
  say "destroyed: databases dropped, $DIR deleted"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  destroy) destroy ;;
  *) echo "usage: $0 up|down|status|destroy   (settings: see the top of this file)" >&2; exit 2 ;;
esac
