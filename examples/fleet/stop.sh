#!/usr/bin/env bash
# Stops the example fleet started by start.sh and removes its instances and data.
for f in /tmp/shoal-fleet/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
sleep 1
for d in /tmp/shoal-fleet/*/instances; do
  for r in "$d"/*.json; do
    [ -f "$r" ] || continue
    pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("pid",""))' "$r")
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
  done
done
rm -rf /tmp/shoal-fleet
