#!/bin/sh
# Entrypoint guard of the compose services that hold a secret (postgres, proxy): refuses to start while a named
# variable is empty or still a placeholder such as .env.example's CHANGE-ME, so a copied .env never runs with a
# password everyone knows; otherwise runs the service's own command.
# usage: sh require-secrets.sh NAME... -- COMMAND [ARG...]
set -eu

refuse() {
    echo "refusing to start: $1" >&2
    exit 78
}
fix='set a real value in .env (see README "Team setup")'

while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    case "$1" in
        "" | [0-9]* | *[!A-Za-z0-9_]*) refuse "'$1' is not a variable name" ;;
    esac
    eval "value=\${$1:-}"
    lowered=$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')
    case "$lowered" in
        "") refuse "$1 is empty: $fix" ;;
        *change-me* | *changeme* | *change_me*) refuse "$1 is still the placeholder of .env.example: $fix" ;;
    esac
    shift
done
[ "$#" -gt 1 ] || refuse "no command after '--' (usage: require-secrets.sh NAME... -- COMMAND [ARG...])"
shift
exec "$@"
