# Shared by cloudvps_setup.sh and release.sh (sourced, not run). Layout under $PREFIX:
#   releases/<id>/        one git ref's files; .venv -> ../../shared/venvs/<hash>; RELEASE
#   current -> releases/<id>
#   shared/var/           data dir (redis, keys db, uploads, logs, sockets), owned by the service user
#   shared/keys/          spiped.key (0600, service user)
#   shared/models/        extra models (<name>.pt + <name>.json)
#   shared/venvs/<hash>/  one venv per distinct requirements.txt (+ Python version), never modified
#                         once built: releases pinning the same requirements share it
#   shared/cache/pip/     pip's wheel cache, so a changed requirements.txt rebuilds quickly
#   shared/scriptorium.env, shared/deploy.env, bin/scriptorium-{env,run}, bin/scriptoriumctl
# shellcheck shell=bash disable=SC2034 # PUT_CHANGED is read by the scripts sourcing this

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
	local path=$1 mode=$2 owner=$3
	if [ ! -d "$path" ]; then
		install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$path"
		changed "created $path"
	elif [ "$(stat -c '%a %U:%G' "$path")" != "$mode $owner" ]; then
		chmod "$mode" "$path"
		chown "$owner" "$path"
		changed "fixed mode/owner of $path"
	fi
}

# put_file DEST MODE OWNER < content: replace DEST only when content, mode or owner differ;
# PUT_CHANGED tells whether it did.
PUT_CHANGED=0
put_file() {
	local dest=$1 mode=$2 owner=$3 tmp
	tmp=$(mktemp "$(dirname "$dest")/.put.XXXXXX")
	cat >"$tmp"
	PUT_CHANGED=0
	if [ -f "$dest" ] && cmp -s "$tmp" "$dest" &&
		[ "$(stat -c '%a %U:%G' "$dest")" = "$mode $owner" ]; then
		rm -f "$tmp"
		return 0
	fi
	chmod "$mode" "$tmp"
	chown "$owner" "$tmp"
	mv -f "$tmp" "$dest"
	PUT_CHANGED=1
	changed "wrote $dest"
}

# Loads the values cloudvps_setup.sh recorded: SOURCE, SVC_USER, KEEP, HTTP_URL.
load_deploy_env() {
	[ -f "$PREFIX/shared/deploy.env" ] || die "$PREFIX is not set up (run scripts/cloudvps_setup.sh)"
	# shellcheck disable=SC1091
	. "$PREFIX/shared/deploy.env"
}

as_service() { "$PREFIX/bin/scriptorium-env" "$@"; }
ctl() { "$PREFIX/bin/scriptoriumctl" "$@"; }

# Debian's interpreter (python3-venv), not whatever `python3` a root shell finds first (a pyenv
# under /root would be unreadable for the service user).
PYTHON=${SC_PYTHON:-/usr/bin/python3}

# venv_for RELEASE_DIR: path of the shared venv its requirements.txt needs, built if missing.
venv_for() {
	local release=$1 hash venv pip_log
	hash=$({
		cat "$release/requirements.txt"
		"$PYTHON" -VV
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
build_release() {
	local ref=$1 commit id tmp venv
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
	"$venv/bin/python" -m compileall -q "$tmp/model" "$tmp/config" >/dev/null
	printf 'ref=%s\ncommit=%s\nbuilt=%s\n' "$ref" "$commit" "$(date -u +%FT%TZ)" >"$tmp/RELEASE"
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
	ln -sfn "releases/$1" "$PREFIX/.current.tmp"
	mv -T "$PREFIX/.current.tmp" "$PREFIX/current"
}

current_id() { basename "$(readlink "$PREFIX/current")"; }
