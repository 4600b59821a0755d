#!/bin/sh
# The image's entry point:
#   docker run IMAGE [pipe|fast|val|hist|steer] [ARGS...]   one of the scripts (default fast)
#   docker run IMAGE --help                                 fast.py's help
#   docker run IMAGE COMMAND [ARGS...]                      any other command, e.g. bash
# Without --config, a config at $SPARSE_CODING_WORK/config.yaml (default
# /work/config.yaml, the folder to mount) is used when there is one.
set -e
script=fast
case "${1:-}" in
    pipe | fast | val | hist | steer) script=$1; shift ;;
    "" | -*) ;;
    *) exec "$@" ;;
esac
config="${SPARSE_CODING_WORK:-/work}/config.yaml"
case " $* " in
    *" --config "* | *" --config="*) ;;
    *) if [ -f "$config" ]; then set -- --config "$config" "$@"; fi ;;
esac
exec python3 -m "sparse_coding.$script" "$@"
