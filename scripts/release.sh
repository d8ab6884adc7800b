#!/usr/bin/env bash
# Zero-downtime upgrade of a machine set up by cloudvps_setup.sh. As root:
#
#   scripts/release.sh [--prefix P] [--ready-timeout S] [--keep N] REF
#       build releases/<id> from REF of the source checkout (deploy.env), smoke-test it, point
#       `current` at it, move gunicorn onto it without dropping a request, warm-restart the worker,
#       wait for /readyz (a worker of the new release with its model loaded); if that fails, go
#       back to the previous release automatically (exit 3). Keeps the newest N releases (5).
#   scripts/release.sh [--prefix P] --rollback
#       the same switch, back to the release before `current`.
#   scripts/release.sh [--prefix P] --restart
#       the same switch onto `current` itself: restarts gunicorn and the worker without dropping a
#       request, e.g. after a change to shared/scriptorium.env or shared/models.
#
# Gunicorn without a gap: nginx connects to run/upstream.sock, a symlink. `gunicorn-next` starts on
# the new code, the link is renamed onto its socket, `gunicorn` restarts on the new code once the
# requests already sent to it are done (graceful TERM), the link comes back, gunicorn-next stops.
# A HUP to gunicorn would not do: its master has the old code (and venv) imported.
set -euo pipefail
umask 022
for var in "${!SCRIPTORIUM_@}" SC_HOME SC_VENV; do unset "$var"; done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=scripts/deploy_lib.sh
. "$HERE/deploy_lib.sh"

# Run from <prefix>/current/scripts, the prefix is the one this release belongs to.
PREFIX=/srv/scriptorium
[ "$(basename "$(dirname "$(dirname "$HERE")")")" = releases ] &&
	PREFIX=$(dirname "$(dirname "$(dirname "$HERE")")")
READY_TIMEOUT=180
DRAIN_S=2
KEEP_ARG=""
MODE=release
REF=""
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) PREFIX=$2 && shift ;;
	--ready-timeout) READY_TIMEOUT=$2 && shift ;;
	--keep) KEEP_ARG=$2 && shift ;;
	--rollback) MODE=rollback ;;
	--restart) MODE=restart ;;
	-h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' && exit 0 ;;
	-*) die "unknown option $1" ;;
	*) REF=$1 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || die "run as root"
[ $MODE != release ] || [ -n "$REF" ] || die "usage: release.sh REF | --rollback | --restart"
PREFIX=$(cd "$PREFIX" && pwd)
load_deploy_env
KEEP=${KEEP_ARG:-$KEEP}
RUN="$PREFIX/shared/var/run"
exec 9>"$PREFIX/shared/release.lock"
flock -n 9 || die "another release is running"

py() { as_service "$PREFIX/current/.venv/bin/python" "$@"; }

# wait_socket NAME: until the gunicorn on run/NAME answers /healthz (60 s).
wait_socket() {
	for _ in $(seq 120); do
		curl -sf -m 2 --unix-socket "$RUN/$1" -o /dev/null http://localhost/healthz && return 0
		sleep 0.5
	done
	log "  $1 did not answer /healthz"
	return 1
}

# restart NAME: stop, take this release's definition of the program (after `reread`), start.
restart() {
	ctl stop "$1" >/dev/null
	ctl update "$1" >/dev/null
	ctl start "$1" >/dev/null
}

roll_gunicorn() {
	if [ "$(readlink "$RUN/upstream.sock")" != gunicorn-next.sock ]; then
		# (a running gunicorn-next is not serving and would run older code: restart it)
		restart gunicorn-next
		wait_socket gunicorn-next.sock || {
			log "  gunicorn-next did not start (logs/gunicorn-next.log)"
			return 1
		}
		py -m model upstream gunicorn-next >/dev/null
		sleep "$DRAIN_S" # requests already connected to `gunicorn` get accepted
	fi
	restart gunicorn
	wait_socket gunicorn.sock || {
		log "  gunicorn did not restart (logs/gunicorn.log); gunicorn-next keeps serving"
		return 1
	}
	py -m model upstream gunicorn >/dev/null
	sleep "$DRAIN_S"
	ctl stop gunicorn-next >/dev/null
	log "  gunicorn runs $(current_id) (nginx never lacked a live socket)"
}

# wait_ready SINCE: until /readyz shows a worker that loaded its models after SINCE (epoch s).
wait_ready() {
	local since=$1 deadline=$((SECONDS + READY_TIMEOUT)) body=""
	while [ $SECONDS -lt $deadline ]; do
		body=$(curl -s -m 5 "$HTTP_URL/readyz" || true)
		if "$PYTHON" -c '
import json, sys
body = json.loads(sys.argv[1])
fresh = [w for w in body.get("workers", []) if w.get("started_at", 0) >= float(sys.argv[2])]
sys.exit(0 if body.get("status") == "ready" and fresh else 1)' "$body" "$since" 2>/dev/null; then
			log "  /readyz: ready"
			return 0
		fi
		sleep 1
	done
	log "  /readyz not ready after ${READY_TIMEOUT}s: ${body:-no answer}"
	return 1
}

# activate ID: make release ID the running one; fails if it does not become ready.
activate() {
	local id=$1 conf="$RUN/nginx.conf" before since
	switch_current "$id"
	log "  current -> releases/$id"
	before=$(md5sum <"$conf")
	in_release "$id" -m model init >/dev/null
	if [ "$before" != "$(md5sum <"$conf")" ]; then
		log "  nginx config changed: graceful reload"
		ctl signal HUP nginx >/dev/null
	fi
	# This release's config/supervisor/*.conf: applied to gunicorn and the worker as they
	# restart, to the other programs (only those it changed) once the release is ready.
	ctl reread >/dev/null
	roll_gunicorn || return 1
	since=$(date +%s)
	log "  worker: warm restart (a running task finishes first, or is redelivered)"
	restart worker
	wait_ready "$since" || return 1
	ctl update | sed 's/^/  supervisord: /'
}

release_ids() { find "$PREFIX/releases" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' | sort; }

# The newest release older than ID that did not fail.
previous_of() {
	local id
	for id in $(release_ids | sort -r); do
		[[ "$id" < "$1" ]] && [ ! -e "$PREFIX/releases/$id/FAILED" ] && printf '%s\n' "$id" && return
	done
	return 1
}

prune() {
	local keep_ids id venv in_use="" pid
	keep_ids=$(
		release_ids | tail -n "$KEEP"
		current_id
		previous_of "$(current_id)" || true
	)
	for id in $(release_ids); do
		grep -qx "$id" <<<"$keep_ids" || {
			rm -rf "${PREFIX:?}/releases/$id"
			log "  pruned release $id"
		}
	done
	# A venv no release uses goes too, unless supervisord itself still runs from it.
	pid=$(cat "$RUN/supervisord.pid" 2>/dev/null || true)
	[ -n "$pid" ] && in_use=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
	for venv in "$PREFIX"/shared/venvs/*/; do
		venv=${venv%/}
		for id in $(release_ids); do
			[ "$(readlink -f "$PREFIX/releases/$id/.venv")" = "$venv" ] && continue 2
		done
		[[ "$in_use" == *"$venv"* ]] && continue
		rm -rf "$venv"
		log "  pruned venv $venv"
	done
}

started=$SECONDS
prev=$(current_id)
if [ $MODE != release ]; then
	target=$prev
	if [ $MODE = rollback ]; then
		target=$(previous_of "$prev") || die "no earlier release to go back to"
	fi
	log "== switching $prev -> $target"
	activate "$target" || die "$target did not become ready (see README: debugging /readyz)"
	log "running $target (switched in $((SECONDS - started)) s)"
	exit 0
fi

log "== building $REF from $SOURCE"
id=$(build_release "$REF")
log "  releases/$id ($(sed -n 's/^commit=//p' "$PREFIX/releases/$id/RELEASE"))"
log "== smoke checks"
in_release "$id" -m model init >/dev/null
if ! in_release "$id" -m model smoke; then
	touch "$PREFIX/releases/$id/FAILED"
	in_release "$prev" -m model init >/dev/null # the running release's nginx.conf again
	die "releases/$id failed its smoke checks; nothing was switched"
fi
log "== activating $id (was $prev)"
if activate "$id"; then
	log "== pruning (keeping $KEEP)"
	prune
	log "released $id in $((SECONDS - started)) s"
	exit 0
fi
touch "$PREFIX/releases/$id/FAILED"
log "== $id is not ready: rolling back to $prev"
activate "$prev" || die "rollback to $prev did not become ready either (see README: debugging /readyz)"
log "rolled back to $prev in $((SECONDS - started)) s; $id is marked FAILED"
exit 3
