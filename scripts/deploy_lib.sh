# Shared by cloudvps_setup.sh and release.sh (sourced, not run). Layout under $PREFIX:
#   releases/<id>/        one git ref's files; .venv -> ../../shared/venvs/<hash>; RELEASE;
#                         FAILED (its reason) once a release failed or was interrupted
#   current -> releases/<id>
#   shared/var/           data dir (redis, keys db, uploads, logs, sockets), owned by the service user
#   shared/keys/          spiped.key, redis-tunnel.key (0600, service user)
#   shared/models/        extra models (<name>.pt + <name>.json)
#   shared/venvs/<hash>/  one venv per distinct requirements.txt (+ Python version), never modified
#                         once built: releases pinning the same requirements share it
#   shared/cache/pip/     pip's wheel cache, so a changed requirements.txt rebuilds quickly
#   shared/scriptorium.env, shared/deploy.env, bin/scriptorium-{env,run}, bin/scriptoriumctl
#
# Functions called in a condition (`if f`, `f || ...`) run without `set -e` (bash ignores it there,
# in every function they call too): each of them checks every step itself and returns 1 at the
# first failure. server/tests/test_release_script.py runs them against a fake installation.
# shellcheck shell=bash disable=SC2034,SC2310 # PUT_CHANGED is read by the scripts sourcing this

log() { printf '%s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

CHANGES=0
changed() {
	CHANGES=$((CHANGES + 1))
	log "  changed: $*"
}
unchanged() { log "  ok: $*"; }

# ensure_dir PATH MODE OWNER: create it or fix its mode/owner; reports a change only if needed.
ensure_dir() {
	local path=$1 mode=$2 owner=$3 now
	if [ ! -d "$path" ]; then
		install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$path"
		changed "created $path"
		return 0
	fi
	now=$(stat -c '%a %U:%G' "$path")
	if [ "$now" != "$mode $owner" ]; then
		chmod "$mode" "$path"
		chown "$owner" "$path"
		changed "fixed mode/owner of $path"
	fi
}

# put_file DEST MODE OWNER < content: replace DEST only when content, mode or owner differ;
# PUT_CHANGED tells whether it did.
PUT_CHANGED=0
put_file() {
	local dest=$1 mode=$2 owner=$3 tmp dir now=""
	dir=$(dirname "$dest")
	tmp=$(mktemp "$dir/.put.XXXXXX")
	cat >"$tmp"
	PUT_CHANGED=0
	[ ! -f "$dest" ] || now=$(stat -c '%a %U:%G' "$dest")
	if [ -f "$dest" ] && cmp -s "$tmp" "$dest" && [ "$now" = "$mode $owner" ]; then
		rm -f "$tmp"
		return 0
	fi
	chmod "$mode" "$tmp"
	chown "$owner" "$tmp"
	mv -f "$tmp" "$dest"
	PUT_CHANGED=1
	changed "wrote $dest"
}

# shell_quote VALUE: VALUE in single quotes for a file bash sources (quotes, $, `, spaces and all
# read back as they were; nothing in it runs).
shell_quote() {
	local q="'\\''"
	printf "'%s'" "${1//\'/$q}"
}

# env_line NAME VALUE: NAME=VALUE, quoted, for shared/*.env (sourced by bash).
env_line() {
	local quoted
	quoted=$(shell_quote "$2")
	printf '%s=%s\n' "$1" "$quoted"
}

# shared/scriptorium.env: cloudvps_setup.sh rewrites the lines between these markers, its own,
# and keeps the operator's.
ENV_BEGIN="# >>> written by cloudvps_setup.sh (its options); your own settings go below <<<"
ENV_END="# >>> end of cloudvps_setup.sh's settings <<<"
SETUP_KEYS='SC_HOME|SC_VENV|SCRIPTORIUM_(ROLE|DATA_DIR|REDIS__PORT|REDIS_TUNNEL__[A-Z_]+|HTTP__HOST'
SETUP_KEYS+='|HTTP__PORT|SPIPED__ENABLED|SPIPED__LISTEN|SPIPED__KEY_FILE|MODELS__DIRS|WORKER__NAME)'
OLD_HEADER="# (Scriptorium's settings on this|flask_config.yaml. Read by|No secrets here)"

# operator_settings FILE: its lines that setup does not own (none when it does not exist). A file
# from before the markers was setup's alone but for the lines the operator added: those setting
# keys setup never writes (and no line of setup's old header).
operator_settings() {
	[ -f "$1" ] || return 0
	if grep -qxF "$ENV_BEGIN" "$1"; then
		awk -v b="$ENV_BEGIN" -v e="$ENV_END" '$0 == b { s = 1; next } $0 == e { s = 0; next } !s' "$1"
	else
		grep -vE "^($SETUP_KEYS=|$OLD_HEADER)" "$1" || true
	fi
}

# Loads the values cloudvps_setup.sh recorded: SOURCE, SVC_USER, KEEP, HTTP_URL, ROLE
# (installations made before roles have no ROLE: they are `all`).
load_deploy_env() {
	[ -f "$PREFIX/shared/deploy.env" ] || die "$PREFIX is not set up (run scripts/cloudvps_setup.sh)"
	ROLE=all
	HTTP_URL=""
	# shellcheck disable=SC1091
	. "$PREFIX/shared/deploy.env"
	case $ROLE in all | api | worker) ;; *) die "deploy.env: unknown ROLE $ROLE" ;; esac
}

as_service() { "$PREFIX/bin/scriptorium-env" "$@"; }
ctl() { "$PREFIX/bin/scriptoriumctl" "$@"; }

# Debian's interpreter (python3-venv), not whatever `python3` a root shell finds first (a pyenv
# under /root would be unreadable for the service user).
PYTHON=${SC_PYTHON:-/usr/bin/python3}

# venv_for RELEASE_DIR: path of the shared venv its requirements.txt needs, built if missing.
venv_for() {
	local release=$1 hash venv pip_log version
	version=$("$PYTHON" -VV)
	hash=$({
		cat "$release/requirements.txt"
		printf '%s\n' "$version"
	} | sha256sum | cut -c1-16)
	venv="$PREFIX/shared/venvs/$hash"
	pip_log="$PREFIX/shared/cache/pip-$hash.log"
	if [ ! -f "$venv/.complete" ]; then
		rm -rf "$venv"
		log "  building venv $venv (pip log: $pip_log)" >&2
		"$PYTHON" -m venv "$venv" >&2
		PIP_CACHE_DIR="$PREFIX/shared/cache/pip" "$venv/bin/pip" install \
			-r "$release/requirements.txt" >"$pip_log" 2>&1 || {
			tail -n 20 "$pip_log" >&2
			die "pip install failed (full log: $pip_log)"
		}
		touch "$venv/.complete"
	else
		log "  reusing venv $venv (same requirements.txt)" >&2
	fi
	printf '%s\n' "$venv"
}

# build_release REF: unpack REF from $SOURCE into releases/<id> with its venv; prints the id.
# (Run as `id=$(build_release REF)` with inherit_errexit: any failing step stops it.)
build_release() {
	local ref=$1 commit id tmp venv built
	commit=$(git -c safe.directory='*' -C "$SOURCE" rev-parse --verify "$ref^{commit}") ||
		die "no commit $ref in $SOURCE"
	id="$(date -u +%Y%m%dT%H%M%SZ)-${commit:0:10}"
	while [ -e "$PREFIX/releases/$id" ]; do id="$id-$RANDOM"; done
	tmp="$PREFIX/releases/.building-$id"
	rm -rf "$PREFIX"/releases/.building-* # left by an interrupted build
	mkdir -p "$tmp"
	git -c safe.directory='*' -C "$SOURCE" archive --format=tar "$commit" | tar -x -C "$tmp"
	venv=$(venv_for "$tmp")
	ln -s "../../shared/venvs/$(basename "$venv")" "$tmp/.venv"
	# The service user may not write here: compile now rather than on every start.
	"$venv/bin/python" -m compileall -q "$tmp/model" "$tmp/client" "$tmp/config" >/dev/null
	built=$(date -u +%FT%TZ)
	printf 'ref=%s\ncommit=%s\nbuilt=%s\n' "$ref" "$commit" "$built" >"$tmp/RELEASE"
	chmod -R go-w "$tmp"
	mv "$tmp" "$PREFIX/releases/$id"
	printf '%s\n' "$id"
}

# in_release ID CMD...: run CMD as the service user inside releases/ID, with its venv's python.
in_release() {
	local id=$1
	shift
	as_service --in "$PREFIX/releases/$id" "$PREFIX/releases/$id/.venv/bin/python" "$@"
}

# switch_current ID: atomic (rename of a new link over the old one).
switch_current() {
	ln -sfn "releases/$1" "$PREFIX/.current.tmp" || return 1
	mv -T "$PREFIX/.current.tmp" "$PREFIX/current" || return 1
}

current_id() {
	local link
	link=$(readlink "$PREFIX/current") || return 1
	printf '%s\n' "${link##*/}"
}

# ---------------------------------------------------------------------------------------------
# Releases (release.sh). Globals: PREFIX, ROLE, RUN, HTTP_URL, KEEP, READY_TIMEOUT, DRAIN_S,
# RESTART_TUNNEL.

# The supervisord config each role runs (model/cli.py SUPERVISOR_CONFS).
supervisor_conf_name() {
	case $ROLE in
	api) printf 'supervisord-api.conf\n' ;;
	worker) printf 'supervisord-worker.conf\n' ;;
	*) printf 'supervisord.conf\n' ;;
	esac
}

# Programs carrying connections from elsewhere: restarting one drops every connection through it
# (the front end's requests, worker hosts' Redis), so release.sh applies changes to their
# definitions only when asked (--restart-tunnel).
TUNNEL_PROGRAMS=" spiped spiped-redis spiped-redis-client "
is_tunnel() { [[ $TUNNEL_PROGRAMS == *" $1 "* ]]; }

release_ids() {
	find "$PREFIX/releases" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' | sort
}
is_failed() { [ -e "$PREFIX/releases/$1/FAILED" ]; }

# mark_failed ID REASON: the release is never gone back to (rollback) nor counted as a good one.
mark_failed() {
	local now
	[ -d "$PREFIX/releases/$1" ] || return 0
	now=$(date -u +%FT%TZ)
	printf '%s %s\n' "$now" "$2" >"$PREFIX/releases/$1/FAILED"
}

# previous_of ID: the newest release older than ID that did not fail.
previous_of() {
	local id ids
	ids=$(release_ids | sort -r)
	for id in $ids; do
		if [[ $id < "$1" ]] && ! is_failed "$id"; then
			printf '%s\n' "$id"
			return 0
		fi
	done
	return 1
}

# prune: keeps the newest KEEP good releases (not FAILED), `current` and the release a rollback
# would go back to; failed releases never count towards KEEP and only the newest 2 stay (their
# logs may be wanted). Then the venvs no release uses.
prune() {
	local ids id good="" failed="" keep_ids current previous venv real in_use="" pid link what
	ids=$(release_ids)
	for id in $ids; do
		if is_failed "$id"; then failed+="$id"$'\n'; else good+="$id"$'\n'; fi
	done
	current=$(current_id)
	previous=$(previous_of "$current") || previous=""
	keep_ids=$(
		printf '%s' "$good" | tail -n "$KEEP"
		printf '%s' "$failed" | tail -n 2
		printf '%s\n%s\n' "$current" "$previous"
	)
	for id in $ids; do
		grep -qx -- "$id" <<<"$keep_ids" && continue
		what="release $id"
		if is_failed "$id"; then what="failed $what"; fi
		rm -rf "${PREFIX:?}/releases/$id"
		log "  pruned $what"
	done
	# A venv no release uses goes too, unless supervisord itself still runs from it.
	pid=$(cat "$RUN/supervisord.pid" 2>/dev/null) || pid=""
	[ -z "$pid" ] || in_use=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || in_use=""
	ids=$(release_ids)
	for venv in "$PREFIX"/shared/venvs/*/; do
		[ -d "$venv" ] || continue
		venv=${venv%/}
		real=$(readlink -f "$venv")
		for id in $ids; do
			link=$(readlink -f "$PREFIX/releases/$id/.venv") || link=""
			[ "$link" != "$real" ] || continue 2
		done
		[[ $in_use == *"$venv"* ]] && continue
		rm -rf "$venv"
		log "  pruned venv $venv"
	done
}

# program_state NAME: prints "STATE PID" of a supervisord program (PID 0 unless it runs),
# "UNKNOWN 0" when supervisord does not answer. Never fails.
program_state() {
	local out state pid=0
	# (supervisorctl status exits 3 when the program is not running: the output says how)
	out=$(ctl status "$1" 2>&1) || true
	state=$(awk -v name="$1" '$1 == name { print $2; exit }' <<<"$out") || state=""
	if [[ $out =~ pid\ ([0-9]+) ]]; then pid=${BASH_REMATCH[1]}; fi
	printf '%s %s\n' "${state:-UNKNOWN}" "$pid"
}

# restart_program NAME: stop, take this release's definition of the program (after `reread`),
# start. Fails when it does not start (supervisorctl start answers a spawn error once the
# program exits before its startsecs: BACKOFF, then FATAL).
restart_program() {
	local state
	ctl stop "$1" >/dev/null || {
		log "  could not stop $1"
		return 1
	}
	ctl update "$1" >/dev/null || {
		log "  could not apply this release's definition of $1"
		return 1
	}
	if ! ctl start "$1" >/dev/null; then
		state=$(program_state "$1")
		log "  $1 did not start (${state% *}; logs/$1.log)"
		return 1
	fi
}

# wait_socket PROGRAM: until that gunicorn answers /healthz on run/PROGRAM.sock (60 s); fails at
# once when supervisord gives the program up (FATAL).
wait_socket() {
	local program=$1 deadline=$((SECONDS + 60)) state
	while :; do
		if curl -sf -m 2 --unix-socket "$RUN/$program.sock" -o /dev/null http://localhost/healthz; then
			return 0
		fi
		state=$(program_state "$program")
		if [ "${state% *}" = FATAL ]; then
			log "  $program is FATAL: it cannot start (logs/$program.log)"
			return 1
		fi
		[ $SECONDS -lt $deadline ] || break
		sleep 0.5
	done
	log "  $program did not answer /healthz on run/$program.sock in 60 s (logs/$program.log)"
	return 1
}

# roll_gunicorn: gunicorn onto `current` without refusing a request (release.sh's header).
roll_gunicorn() {
	local link
	link=$(readlink "$RUN/upstream.sock") || link=""
	if [ "$link" != gunicorn-next.sock ]; then
		# (a running gunicorn-next is not serving and would run older code: restart it)
		restart_program gunicorn-next || return 1
		wait_socket gunicorn-next || return 1
		py -m model upstream gunicorn-next >/dev/null || {
			log "  could not point nginx at gunicorn-next"
			return 1
		}
		sleep "$DRAIN_S" # requests already connected to `gunicorn` get accepted
	fi
	restart_program gunicorn || {
		log "  gunicorn did not restart (logs/gunicorn.log); gunicorn-next keeps serving"
		return 1
	}
	wait_socket gunicorn || return 1
	py -m model upstream gunicorn >/dev/null || {
		log "  could not point nginx back at gunicorn (gunicorn-next keeps serving)"
		return 1
	}
	sleep "$DRAIN_S"
	ctl stop gunicorn-next >/dev/null || {
		log "  could not stop gunicorn-next"
		return 1
	}
	log "  gunicorn runs ${CURRENT_ID:-?} (nginx never lacked a live socket)"
}

py() { as_service "$PREFIX/current/.venv/bin/python" "$@"; }

# worker_fresh SINCE PID: this host's worker (main process PID) has a pool process that loaded
# its models at or after SINCE (epoch s), per its heartbeat in Redis. Releases from before
# `python -m model workers` (role all only) are judged by /readyz, as they were.
worker_fresh() {
	local since=$1 pid=$2 body
	if [ "$HAS_WORKERS_CMD" -eq 1 ]; then
		# (an explicit status: a bare `return` in the EXIT trap's rollback gives the trap's own)
		py -m model workers --since "$since" --parent "$pid" >/dev/null 2>&1 || return 1
		return 0
	fi
	body=$(curl -s -m 5 "$HTTP_URL/readyz") || return 1
	"$PYTHON" -c '
import json, sys
body = json.loads(sys.argv[1])
fresh = [w for w in body.get("workers", []) if w.get("started_at", 0) >= float(sys.argv[2])]
sys.exit(0 if body.get("status") == "ready" and fresh else 1)' "$body" "$since" 2>/dev/null
}

# wait_ready SINCE: until this host runs the release `current` points at: its worker has loaded
# its models since SINCE (heartbeat in Redis) and, on an API host, /readyz answers ready. Fails at
# once when supervisord gives the worker up (FATAL) or it keeps dying (a 4th main process).
wait_ready() {
	local since=$1 deadline=$((SECONDS + READY_TIMEOUT)) state pid pids=" " starts=0
	local why="no answer yet"
	HAS_WORKERS_CMD=0
	if py -m model workers --help >/dev/null 2>&1; then HAS_WORKERS_CMD=1; fi
	while :; do
		state=$(program_state worker)
		pid=${state#* }
		state=${state% *}
		case $state in
		FATAL)
			log "  worker is FATAL: supervisord gave up starting it (logs/worker.log)"
			return 1
			;;
		RUNNING)
			if [[ $pids != *" $pid "* ]]; then
				pids+="$pid "
				starts=$((starts + 1))
			fi
			if [ $starts -gt 3 ]; then
				log "  worker keeps exiting (main processes$pids): logs/worker.log"
				return 1
			fi
			if ! worker_fresh "$since" "$pid"; then
				why="no heartbeat from a worker started since $(date -d "@$since" +%T)"
			elif [ "$ROLE" = worker ]; then
				log "  worker ready (its heartbeat is in Redis)"
				return 0
			elif curl -sf -m 5 -o /dev/null "$HTTP_URL/readyz"; then
				log "  /readyz: ready"
				return 0
			else
				why="/readyz: $(curl -s -m 5 "$HTTP_URL/readyz" || printf 'no answer')"
			fi
			;;
		*) why="worker is $state" ;;
		esac
		[ $SECONDS -lt $deadline ] || break
		sleep 1
	done
	log "  not ready after ${READY_TIMEOUT}s: $why"
	return 1
}

# apply_program_changes: this release's config/supervisor/*.conf for the programs gunicorn and the
# worker are not (they took theirs as they restarted): added, removed and changed ones are applied;
# a changed or removed tunnel only with --restart-tunnel (else a warning says what waits).
apply_program_changes() {
	local out name what apply=() held=()
	out=$(ctl reread) || {
		log "  supervisord could not read this release's program definitions: $out"
		return 1
	}
	while read -r name what; do
		name=${name%:}
		case $what in changed | available | disappeared) ;; *) continue ;; esac
		if is_tunnel "$name" && [ "$what" != available ] && [ "$RESTART_TUNNEL" -eq 0 ]; then
			held+=("$name")
		else
			apply+=("$name")
		fi
	done <<<"$out"
	if [ ${#apply[@]} -gt 0 ]; then
		out=$(ctl update "${apply[@]}") || {
			log "  supervisord could not apply the definitions of ${apply[*]}: $out"
			return 1
		}
		log "  supervisord: ${out//$'\n'/$'\n'  supervisord: }"
	fi
	for name in "${held[@]}"; do
		log "  warning: $name's definition changed in this release; NOT applied, as restarting it"
		log "           drops every connection through it. When convenient: release.sh --restart"
		log "           --restart-tunnel (or scriptoriumctl update $name)"
	done
}

# conf_sum FILE: its checksum, or "none".
conf_sum() {
	if [ -f "$1" ]; then md5sum <"$1"; else printf 'none\n'; fi
}

# activate ID: make release ID the running one; fails if it does not become ready. TOUCHED says
# whether it got as far as changing anything (an interrupted release.sh then switches back).
# NGINX_LOADED: checksum of the nginx.conf nginx runs (release.sh sets it when it starts).
TOUCHED=0
activate() {
	local id=$1 conf="$RUN/nginx.conf" before after since supervisor_conf
	supervisor_conf=$(supervisor_conf_name)
	if [ ! -f "$PREFIX/releases/$id/$supervisor_conf" ]; then
		log "  releases/$id has no $supervisor_conf: it predates role $ROLE"
		return 1
	fi
	TOUCHED=1
	CURRENT_ID=$id
	switch_current "$id" || {
		log "  could not point current at releases/$id"
		return 1
	}
	log "  current -> releases/$id"
	before=$(conf_sum "$conf") || return 1
	in_release "$id" -m model init >/dev/null || {
		log "  python -m model init failed in releases/$id"
		return 1
	}
	after=$(conf_sum "$conf") || return 1
	# (compared with what nginx last loaded: the smoke checks' init already rendered the file)
	if [ "$ROLE" != worker ] && [ "$after" != "${NGINX_LOADED:-$before}" ]; then
		log "  nginx config changed: graceful reload"
		ctl signal HUP nginx >/dev/null || {
			log "  nginx did not take its new config (signal HUP failed)"
			return 1
		}
		NGINX_LOADED=$after
	fi
	# This release's config/supervisor/*.conf: applied to gunicorn and the worker as they
	# restart, to the other programs (only those it changed) once the release is ready.
	ctl reread >/dev/null || {
		log "  supervisord could not read releases/$id's program definitions (ctl reread)"
		return 1
	}
	if [ "$ROLE" != worker ]; then roll_gunicorn || return 1; fi
	since=$(date +%s)
	log "  worker: warm restart (a running task finishes first, or is redelivered)"
	restart_program worker || return 1
	# The webhook deliverer (API hosts) runs this release's code too; events wait in Redis while
	# it restarts. A release that brings it for the first time adds it below, once ready.
	if [ "$ROLE" != worker ]; then
		case $(program_state webhooks) in RUNNING*)
			log "  webhooks: restart (pending deliveries wait in Redis)"
			restart_program webhooks || return 1
			;;
		esac
	fi
	wait_ready "$since" || return 1
	apply_program_changes || return 1
}

# warn_supervisord_stale: the values supervisord took at its start (ports, paths in its programs'
# command lines) that shared/scriptorium.env now changes apply only once supervisord restarts:
# say so, and how. (Programs read the rest of the file themselves as they start.)
warn_supervisord_stale() {
	local pid names
	pid=$(cat "$RUN/supervisord.pid" 2>/dev/null) || return 0
	names=$(py -m model supervisord-env --pid "$pid" 2>/dev/null) || return 0
	[ -n "$names" ] || return 0
	log "  warning: supervisord took ${names//$'\n'/, } at its start and the settings now differ:"
	log "           they apply once it restarts: systemctl restart scriptorium (without systemd:"
	log "           $PREFIX/bin/scriptoriumctl shutdown, then $PREFIX/bin/scriptorium-run)"
}
