#!/usr/bin/env bash
# Raspberry Pi OS Bookworm 64-bit (Python 3.11): install the daemon as a systemd service.
# usage: sudo devices/install-pi.sh [raspberry-pi-4|raspberry-pi-5] [ARTIFACTS_DIR]
# Without ARTIFACTS_DIR the profile's packaged model runs (raspberry-pi-4: cbilstm-lite, raspberry-pi-5: cbilstm).
set -euo pipefail
PROFILE=${1:-raspberry-pi-5}
ARTIFACTS=${2:-}
SRC=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$SRC/devices/$PROFILE.toml" ] || { echo "no profile devices/$PROFILE.toml" >&2; exit 2; }
[ -z "$ARTIFACTS" ] || [ -f "$ARTIFACTS/manifest.json" ] || { echo "no manifest.json in $ARTIFACTS (run python -m export first)" >&2; exit 2; }

apt-get update -qq
# python3-picamera2: camera modules on the CSI port go through libcamera, which OpenCV cannot open
apt-get install -y -qq python3-venv python3-pip libgl1 python3-picamera2 >/dev/null
id fer-edge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin -G video fer-edge

install -d /opt/fer-edge /etc/fer-edge /var/lib/fer-edge
python3 -m venv --system-site-packages /opt/fer-edge/venv  # sees apt's picamera2, as its manual advises
/opt/fer-edge/venv/bin/pip install -q --upgrade pip
# ai-edge-litert has aarch64 wheels; tflite-runtime is the fallback the backend also accepts
/opt/fer-edge/venv/bin/pip install -q "$SRC[edge]" || /opt/fer-edge/venv/bin/pip install -q "$SRC" tflite-runtime paho-mqtt
cp -r "$SRC/devices" /opt/fer-edge/
[ -f /etc/fer-edge/edge.toml ] || install -m 0644 "$SRC/devices/edge.example.toml" /etc/fer-edge/edge.toml
if [ -n "$ARTIFACTS" ]; then  # your own export replaces the packaged model
  install -d /opt/fer-edge/artifacts && rm -rf /opt/fer-edge/artifacts/custom && cp -r "$ARTIFACTS" /opt/fer-edge/artifacts/custom
  grep -q '^artifacts *=' /etc/fer-edge/edge.toml || sed -i 's|^\[model\]$|[model]\nartifacts = "/opt/fer-edge/artifacts/custom"|' /etc/fer-edge/edge.toml
fi
echo "PROFILE=$PROFILE" > /etc/default/fer-edge
chown -R fer-edge: /var/lib/fer-edge
install -m 0644 "$SRC/devices/edge-runtime@.service" /etc/systemd/system/fer-edge@.service
systemctl daemon-reload
systemctl enable --now fer-edge@edge.service
echo "installed: systemctl status fer-edge@edge ; curl -s 127.0.0.1:8080/healthz"
