#!/bin/sh
# Run by Patroni once, on the first primary, with the superuser's connection
# string: the service's user and database (the app creates its tables).
set -eu
psql "$1" -v ON_ERROR_STOP=1 -q \
    -c "CREATE ROLE gifts LOGIN PASSWORD '$(cat "$(dirname "$0")/app-password")'" \
    -c "CREATE DATABASE gifts OWNER gifts"
