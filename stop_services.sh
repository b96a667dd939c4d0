#!/usr/bin/env bash
# Stop the services that start_services.sh started, in reverse start order, by
# the pid files in RUN_DIR. Each service runs in its own process group: its
# main process gets TERM so that it can shut down cleanly, and whatever is
# left of the group after STOP_TIMEOUT seconds gets KILL. A Redis that
# start_services.sh found already running has no pid file and keeps running.
set -euo pipefail
cd "$(dirname "$0")"

RUN_DIR=${RUN_DIR:-var/run}
STOP_TIMEOUT=${STOP_TIMEOUT:-15}
SERVICES=(streamlit flower api interactive worker redis)
POLL_SECONDS=0.2

if [[ ! $STOP_TIMEOUT =~ ^[0-9]+$ ]]; then
  echo "STOP_TIMEOUT='$STOP_TIMEOUT' is invalid: set it to whole seconds." >&2
  exit 2
fi

# True for a running process, false for a missing one or a zombie.
pid_alive() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# True while process group $1 has a member that is not a zombie. Zombies are
# skipped because a container's init may never reap them.
group_alive() {
  local file stat state pgrp
  for file in /proc/[0-9]*/stat; do
    read -r stat 2>/dev/null <"$file" || continue
    # The fields after the command name are: state, ppid, pgrp, ...
    stat=${stat##*) }
    state=${stat%% *}
    stat=${stat#* }
    stat=${stat#* }
    pgrp=${stat%% *}
    [[ $pgrp == "$1" && $state != Z ]] && return 0
  done
  return 1
}

# Poll until process group $1 is gone. Return false if it is still running
# after $2 seconds.
wait_group_gone() {
  local polls=$(($2 * 5)) group_signalled=false
  while group_alive "$1"; do
    ((polls-- > 0)) || return 1
    # Once the main process has exited, TERM whatever it left behind.
    if ! $group_signalled && ! pid_alive "$1"; then
      kill -TERM -- "-$1" 2>/dev/null || true
      group_signalled=true
    fi
    sleep "$POLL_SECONDS"
  done
}

stop_service() {
  local name=$1 pid_file=$RUN_DIR/$1.pid pid
  pid=$(<"$pid_file")
  if [[ ! $pid =~ ^[0-9]+$ ]] || ((pid <= 1)) || ! group_alive "$pid"; then
    echo "$name: not running; removed the stale pid file $pid_file"
    rm -f "$pid_file"
    return
  fi

  echo "$name: stopping process group $pid"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_group_gone "$pid" "$STOP_TIMEOUT"; then
    echo "$name: still running after $STOP_TIMEOUT s; sending KILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
    if ! wait_group_gone "$pid" 5; then
      echo "$name: process group $pid is still running after KILL," \
        "so $pid_file is kept." >&2
      return 1
    fi
  fi
  rm -f "$pid_file"
  echo "$name: stopped"
}

found=0
status=0
for name in "${SERVICES[@]}"; do
  [[ -f $RUN_DIR/$name.pid ]] || continue
  found=$((found + 1))
  stop_service "$name" || status=1
done
((found > 0)) || echo "Nothing is running: no pid files in $RUN_DIR."
exit "$status"
