#!/usr/bin/env bash
# Runs every fuzz target in the module for a short time each (FUZZTIME,
# default 3s). Seed corpora also run as plain tests under `go test`.
set -euo pipefail
t="${FUZZTIME:-3s}"
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do
  pkg="./$(dirname "${f#./}")"
  for name in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //'); do
    echo "fuzz $pkg $name ($t)"
    go test -run='^$' -fuzz="^${name}\$" -fuzztime="$t" -fuzzminimizetime=10x "$pkg" >/tmp/qtune-fuzz.log 2>&1 || { cat /tmp/qtune-fuzz.log; exit 1; }
  done
done
