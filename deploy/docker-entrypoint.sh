#!/bin/sh
# Entrypoint of the mfsweep image. One image serves the driver, the Ray head and the Ray workers:
#   docker run IMAGE run /studies/x.yaml --address auto    -> mfsweep run /studies/x.yaml --address auto
#   docker run IMAGE ray start --head --block              -> ray start --head --block
#   docker run IMAGE bash                                  -> a shell (what the Ray cluster launcher runs)
# Anything that is not an mfsweep subcommand or option is executed as given.
set -e
case "${1:-}" in
  ""|-*|train|validate|run|report|ui|encode) exec mfsweep "$@" ;;
  *) exec "$@" ;;
esac
