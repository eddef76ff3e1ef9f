#!/usr/bin/env bash
# Starts the example multi-region fleet on this machine: five agents in three regions
# (eu-west ×2, us-east ×2, ap-south ×1), then deploys services.yaml. Stop it with stop.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shoal=${SHOAL:-$here/../../target/release/shoal}
[ -x "$shoal" ] || { echo "build first: cargo build --release (or set SHOAL=path/to/shoal)"; exit 1; }
mkdir -p /tmp/shoal-fleet
[ -f /tmp/shoal-fleet/cluster.key ] || "$shoal" keygen --out /tmp/shoal-fleet/cluster.key
for n in eu-1 eu-2 us-1 us-2 ap-1; do
  "$shoal" agent --config "$here/$n.toml" > "/tmp/shoal-fleet/$n.log" 2>&1 &
  echo $! > "/tmp/shoal-fleet/$n.pid"
  sleep 0.3
done
for _ in $(seq 1 50); do
  "$shoal" nodes --api 127.0.0.1:7910 --data-dir /tmp/shoal-fleet/eu-1 >/dev/null 2>&1 && break
  sleep 0.2
done
sleep 3
"$shoal" deploy -f "$here/services.yaml" --api 127.0.0.1:7910 --data-dir /tmp/shoal-fleet/eu-1
sleep 3
"$shoal" nodes --api 127.0.0.1:7910 --data-dir /tmp/shoal-fleet/eu-1
"$shoal" ps --api 127.0.0.1:7910 --data-dir /tmp/shoal-fleet/eu-1
echo "logs and data in /tmp/shoal-fleet; stop with $here/stop.sh"
