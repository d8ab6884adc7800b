#!/usr/bin/env bash
# with_settings.sh CMD...: CMD with the settings file's values, read now (supervisord runs
# gunicorn, the worker and the webhooks worker through this). An installation's supervisord is
# started by bin/scriptorium-env with SC_ENV_FILE=<prefix>/shared/scriptorium.env and without its
# SCRIPTORIUM_* values: each program reads the file as it starts, so an edit applies at the next
# `release.sh --restart` (supervisord's own environment is read once, at its start). Without
# SC_ENV_FILE (development, tests) CMD runs with the environment it was given.
set -euo pipefail
if [ -n "${SC_ENV_FILE:-}" ]; then
	set -a
	# shellcheck disable=SC1090 # the installation's settings file
	. "$SC_ENV_FILE"
	set +a
fi
exec "$@"
