#!/usr/bin/env bash
# Jetson (JetPack 6, Ubuntu 22.04, Python 3.10): the daemon with onnxruntime-gpu from NVIDIA's index.
# usage: sudo devices/install-jetson.sh [ARTIFACTS_DIR]
# Without ARTIFACTS_DIR the packaged model for the CPU runs (the Orin's A78AE has int8 dot products: cbilstm).
# JP6 wheels: https://pypi.jetson-ai-lab.dev/jp6/cu126 (override with ORT_INDEX=...).
set -euo pipefail
ARTIFACTS=${1:-}
ORT_INDEX=${ORT_INDEX:-https://pypi.jetson-ai-lab.dev/jp6/cu126}
SRC=$(cd "$(dirname "$0")/.." && pwd)
[ -z "$ARTIFACTS" ] || [ -f "$ARTIFACTS/manifest.json" ] || { echo "no manifest.json in $ARTIFACTS (run python -m export first)" >&2; exit 2; }

apt-get update -qq
# python3-opencv: JetPack's OpenCV, built with GStreamer (CSI cameras: --source "gst:nvarguscamerasrc ! ...")
apt-get install -y -qq python3-venv python3-pip python3-opencv >/dev/null
id fer-edge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin -G video fer-edge

install -d /opt/fer-edge /etc/fer-edge /var/lib/fer-edge
python3 -m venv --system-site-packages /opt/fer-edge/venv
/opt/fer-edge/venv/bin/pip install -q --upgrade pip
/opt/fer-edge/venv/bin/pip install -q "$SRC[edge]"
# the PyPI OpenCV has no GStreamer: remove it so `import cv2` finds JetPack's (system site packages)
/opt/fer-edge/venv/bin/pip uninstall -y -q opencv-python-headless
# CUDA/TensorRT providers; without this wheel the daemon logs the fallback and runs on CPU
/opt/fer-edge/venv/bin/pip install -q --extra-index-url "$ORT_INDEX" onnxruntime-gpu \
  || echo "warning: onnxruntime-gpu not installed; ONNX will run on CPU" >&2
cp -r "$SRC/devices" /opt/fer-edge/
[ -f /etc/fer-edge/edge.toml ] || install -m 0644 "$SRC/devices/edge.example.toml" /etc/fer-edge/edge.toml
if [ -n "$ARTIFACTS" ]; then  # your own export replaces the packaged model
  install -d /opt/fer-edge/artifacts && rm -rf /opt/fer-edge/artifacts/custom && cp -r "$ARTIFACTS" /opt/fer-edge/artifacts/custom
  grep -q '^artifacts *=' /etc/fer-edge/edge.toml || sed -i 's|^\[model\]$|[model]\nartifacts = "/opt/fer-edge/artifacts/custom"|' /etc/fer-edge/edge.toml
fi
echo "PROFILE=jetson-orin-nano" > /etc/default/fer-edge
chown -R fer-edge: /var/lib/fer-edge
install -m 0644 "$SRC/devices/edge-runtime@.service" /etc/systemd/system/fer-edge@.service
systemctl daemon-reload
systemctl enable --now fer-edge@edge.service
echo "installed: journalctl -u fer-edge | grep 'runs on'  # which ONNX provider actually ran"
