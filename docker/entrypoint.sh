#!/bin/sh
# The image's entry point:
#   docker run IMAGE [pipe|fast|val|hist|steer] [ARGS...]   one of the scripts (default fast)
#   docker run IMAGE demo [DIR]                             the offline demo into DIR (default /work/demo)
#   docker run IMAGE --help                                 fast.py's help
#   docker run IMAGE COMMAND [ARGS...]                      any other command, e.g. bash
# Without --config, a config at $SPARSE_CODING_WORK/config.yaml (default
# /work/config.yaml, the folder to mount) is used when there is one.
set -e
work="${SPARSE_CODING_WORK:-/work}"
script=fast
case "${1:-}" in
    pipe | fast | val | hist | steer) script=$1; shift ;;
    demo)
        shift
        if [ $# -eq 0 ]; then set -- "$work/demo"; fi
        exec python3 -m sparse_coding demo "$@" ;;
    "" | -*) ;;
    *) exec "$@" ;;
esac
# A host cache folder that did not exist is created by Docker, empty and owned by root:
# this user cannot write it, and every download would fail later with a permission error.
cache="${HF_HOME:-}"
if [ -n "$cache" ] && [ -d "$cache" ] && [ ! -w "$cache" ] && [ -z "$(ls -A "$cache")" ]; then
    echo "error: the Hugging Face cache $cache is empty and not writable by uid $(id -u); Docker" \
        "creates a missing host folder as root. Create it first (mkdir -p ~/.cache/huggingface)," \
        "or give it to uid $(id -u) (sudo chown), then run again" >&2
    exit 1
fi
config="$work/config.yaml"
case " $* " in
    *" --config "* | *" --config="*) ;;
    *) if [ -f "$config" ]; then set -- --config "$config" "$@"; fi ;;
esac
exec python3 -m "sparse_coding.$script" "$@"
