#!/bin/bash
# Stand-in for the official script (whose kafka-tools jar is not here): succeeds when the
# --bootstrap-server's port accepts a connection, which is what the compose healthcheck asks.
set -euo pipefail
server=""
while [ $# -gt 0 ]; do
  case "$1" in --bootstrap-server) server=$2; shift 2 ;; *) shift ;; esac
done
exec python3 -c 'import socket, sys; h, p = sys.argv[1].rsplit(":", 1); socket.create_connection((h, int(p)), 5).close()' "${server%%,*}"
