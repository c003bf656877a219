#!/usr/bin/env bash
# Run the edge runtime on aarch64 (the architecture of a Raspberry Pi 4/5 on Pi OS Bookworm 64-bit
# and of a Jetson) under user-mode emulation on an x86_64 workstation.
#
#   devices/emulate-aarch64.sh build          # rootfs + venv with `pip install .[edge,onnx]` (idempotent)
#   devices/emulate-aarch64.sh run CMD ...    # run CMD in the rootfs, repo mounted at the same path
#   devices/emulate-aarch64.sh shell          # interactive shell in the rootfs
#   devices/emulate-aarch64.sh check          # build, then devices/aarch64_check.py (make aarch64-check)
#   devices/emulate-aarch64.sh clean          # delete the cached rootfs
#
# What it does:
#   1. needs root, qemu-user-static, debootstrap (installs them with apt-get when missing);
#   2. mounts binfmt_misc and registers qemu-aarch64 with the F (fix-binary) flag, so aarch64 ELF
#      files run inside the chroot without a qemu binary in it; the emulated CPU is a Cortex-A76
#      (the Pi 5's; QEMU_CPU=cortex-a72 for a Pi 4's);
#   3. debootstraps an arm64 Debian Bookworm rootfs (Python 3.11, as Pi OS Bookworm) into
#      $ROOTFS (default .cache/aarch64-rootfs, git-ignored) from the mirror this machine's apt uses;
#   4. copies the host's CA bundle into it (pip reaches PyPI through the same trust store as the host);
#   5. creates /opt/fer-edge (a venv) in it and installs the project's `edge` + `onnx` extras from
#      aarch64 wheels on PyPI -- no TensorFlow -- and proves `import tensorflow` fails there;
#   6. records the exact versions to $ROOTFS/opt/fer-edge/aarch64-versions.txt.
# Every mount (proc, dev, dev/pts, the repo bind mount at its own path) is undone on exit by a trap.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTFS="${ROOTFS:-$REPO/.cache/aarch64-rootfs}"
SUITE="${SUITE:-bookworm}"
VENV_IN=/opt/fer-edge
CA_IN=/usr/local/share/ca-certificates/host-bundle.crt
HOST_CA="${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}"
# The CPU qemu emulates: cortex-a76 is the Raspberry Pi 5's core (NEON, dotprod, fp16; no SVE), so
# numpy/XNNPACK/MLAS pick the code paths they pick on a Pi 5. QEMU_CPU=cortex-a72 for a Pi 4.
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
MOUNTED=()

say() { printf '[aarch64] %s\n' "$*" >&2; }
die() { printf '[aarch64] error: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null || true
    done
    if ((${#MOUNTED[@]})); then say "unmounted ${#MOUNTED[@]} mount(s) under $ROOTFS"; fi
    MOUNTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need_root() { [[ $EUID -eq 0 ]] || die "needs root (debootstrap, chroot, mounts): sudo $0 $*"; }

# The Debian mirror this machine's apt is configured with (deb822 .sources or one-line lists).
debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk 'tolower($1)=="uris:" {print $2}' | grep -v -- '-security' | grep '/debian' | head -1 || true)
    if [[ -z "$uri" ]]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; break}}' \
              | grep -v -- '-security' | grep '/debian' | head -1 || true)
    fi
    [[ -n "$uri" ]] || die "no Debian mirror in /etc/apt/sources.list(.d); set DEBIAN_MIRROR=URL"
    echo "$uri"
}

ensure_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P || -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    if ((${#missing[@]})); then
        say "installing host tools: ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" binfmt-support >/dev/null
    else
        say "host tools present: debootstrap, qemu-user-static"
    fi
}

ensure_binfmt() {
    local bm=/proc/sys/fs/binfmt_misc
    if [[ ! -e $bm/register ]]; then
        say "mounting binfmt_misc on $bm"
        mount -t binfmt_misc binfmt_misc "$bm"
    fi
    if [[ -e $bm/qemu-aarch64 ]]; then
        grep -q '^flags:.*F' "$bm/qemu-aarch64" \
            || die "qemu-aarch64 is registered without the F flag; echo -1 > $bm/qemu-aarch64 and rerun"
        say "binfmt: qemu-aarch64 registered ($(sed -n 's/^interpreter //p' "$bm/qemu-aarch64"), flags $(sed -n 's/^flags: //p' "$bm/qemu-aarch64"))"
        return
    fi
    local interp=/usr/libexec/qemu-binfmt/aarch64-binfmt-P flags=POCF
    [[ -e $interp ]] || { interp=/usr/bin/qemu-aarch64-static; flags=OCF; }
    say "binfmt: registering qemu-aarch64 -> $interp with flags $flags (F: works inside a chroot; P: the -P wrapper wants argv[0])"
    # ELF64 little-endian, e_machine = 0xb7 (EM_AARCH64); the same magic/mask Debian's qemu-user-static uses.
    printf '%s' ":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$interp:$flags" >"$bm/register"
}

ensure_rootfs() {
    if [[ -e $ROOTFS/.debootstrap-done ]]; then
        say "rootfs: cached at $ROOTFS ($(cat "$ROOTFS/.debootstrap-done"))"
        return
    fi
    local mirror t0
    mirror=$(debian_mirror)
    t0=$SECONDS
    if [[ -d $ROOTFS ]]; then say "rootfs: removing an unfinished build at $ROOTFS"; rm -rf --one-file-system "$ROOTFS"; fi
    mkdir -p "$ROOTFS"
    say "rootfs: debootstrap --arch=arm64 --variant=minbase $SUITE from $mirror (a few minutes; second stage runs under qemu)"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
        "$SUITE" "$ROOTFS" "$mirror" >"$ROOTFS.debootstrap.log" 2>&1 \
        || { tail -20 "$ROOTFS.debootstrap.log" >&2; die "debootstrap failed (log: $ROOTFS.debootstrap.log)"; }
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb
    echo "Debian $SUITE arm64 from $mirror, built $(date -u +%FT%TZ) in $((SECONDS - t0)) s" >"$ROOTFS/.debootstrap-done"
    say "rootfs: built in $((SECONDS - t0)) s"
}

mount_all() {
    local m
    for m in proc dev dev/pts; do mkdir -p "$ROOTFS/$m"; done
    mount -t proc proc "$ROOTFS/proc" && MOUNTED+=("$ROOTFS/proc")
    # No /sys on purpose: the host's is an x86 one, and onnxruntime's cpuinfo (ARM code path)
    # segfaults parsing its CPU topology under qemu; without it, it logs "cpuinfo_initialize failed"
    # and runs. A real Pi has a real ARM /sys.
    mount --bind /dev "$ROOTFS/dev" && MOUNTED+=("$ROOTFS/dev")
    mount --bind /dev/pts "$ROOTFS/dev/pts" && MOUNTED+=("$ROOTFS/dev/pts")
    # The repo at the same absolute path, so every path (artifacts, videos, events) means the same inside.
    mkdir -p "$ROOTFS$REPO"
    mount --bind "$REPO" "$ROOTFS$REPO" && MOUNTED+=("$ROOTFS$REPO")
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
    say "mounted proc, dev, dev/pts and $REPO (bind) in the rootfs"
}

# Run a command in the rootfs with a clean environment (no host pip config, no host find-links).
in_root() {
    chroot "$ROOTFS" /usr/bin/env -i \
        HOME=/root LANG=C.UTF-8 PATH="$VENV_IN/bin:/usr/local/bin:/usr/bin:/bin" QEMU_CPU="$QEMU_CPU" \
        PIP_CERT="$CA_IN" SSL_CERT_FILE="$CA_IN" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
        "$@"
}

ensure_ca() {
    [[ -r $HOST_CA ]] || die "no CA bundle at $HOST_CA (set HOST_CA=...)"
    mkdir -p "$(dirname "$ROOTFS$CA_IN")"
    if ! cmp -s "$HOST_CA" "$ROOTFS$CA_IN"; then
        cp "$HOST_CA" "$ROOTFS$CA_IN"
        say "ca: copied the host's CA bundle ($HOST_CA) to $CA_IN in the rootfs (pip uses it via PIP_CERT)"
    else
        say "ca: host CA bundle already in the rootfs"
    fi
}

ensure_venv() {
    local key stamp="$ROOTFS$VENV_IN/.installed"
    key="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
    if [[ -e $stamp && "$(cat "$stamp")" == "$key" ]]; then
        say "venv: $VENV_IN up to date with pyproject.toml ($key)"
    else
        [[ -x $ROOTFS$VENV_IN/bin/python ]] || { say "venv: python3 -m venv $VENV_IN"; in_root python3 -m venv "$VENV_IN"; }
        say "venv: pip install '.[edge,onnx]' from PyPI aarch64 wheels (binary only; slow under qemu)"
        # --only-binary: every dependency must come as a manylinux aarch64 wheel, as on a Pi.
        in_root sh -c "cd '$REPO' && pip install -q --only-binary=:all: --no-binary=fer-edge '.[edge,onnx]'" \
            || die "pip install in the rootfs failed"
        echo "$key" >"$stamp"
    fi
    # The project itself is reinstalled every time (no deps, seconds), so the rootfs runs this checkout.
    say "venv: reinstalling this checkout (pip install --no-deps .) into $VENV_IN"
    in_root sh -c "cd '$REPO' && pip install -q --no-deps --force-reinstall . 2>&1 | grep -v 'running as .root' || true"
    rm -rf "$REPO/build" "$REPO"/*.egg-info 2>/dev/null || true
}

prove_no_tensorflow() {
    local out
    if out=$(in_root python -c 'import tensorflow' 2>&1); then
        die "import tensorflow SUCCEEDED in the aarch64 venv -- the edge install must not pull TensorFlow"
    fi
    say "tensorflow: 'import tensorflow' fails in the aarch64 venv: $(echo "$out" | tail -1)"
    in_root python -c 'import edge_runtime, numpy, cv2; print("edge_runtime imports without TensorFlow on", __import__("platform").machine())' \
        | sed 's/^/[aarch64]   /' >&2
}

record_versions() {
    local f="$ROOTFS$VENV_IN/aarch64-versions.txt"
    {
        echo "# aarch64 (emulated with qemu-user) -- $(date -u +%FT%TZ)"
        echo "machine: $(in_root uname -m)"
        echo "os: $(in_root sh -c '. /etc/os-release; echo $PRETTY_NAME')"
        echo "python: $(in_root python -c 'import sys; print(sys.version.split()[0])')"
        echo "qemu cpu: $QEMU_CPU ($(in_root python -c 'from numpy._core._multiarray_umath import __cpu_features__ as f; print(" ".join(sorted(k for k, v in f.items() if v)))' 2>/dev/null))"
        echo "qemu: $( (qemu-aarch64-static --version 2>/dev/null || /usr/libexec/qemu-binfmt/aarch64-binfmt-P --version 2>/dev/null) | head -1)"
        echo "tensorflow: not installed (import fails)"
        in_root pip freeze --all --exclude-editable 2>/dev/null | grep -v '^fer-edge'
    } >"$f"
    say "versions written to $f:"
    sed 's/^/[aarch64]   /' "$f" >&2
}

build() {
    need_root "$@"
    local t0=$SECONDS
    ensure_tools
    ensure_binfmt
    ensure_rootfs
    ensure_ca
    mount_all
    say "rootfs says: $(in_root uname -m), $(in_root python3 --version)"
    ensure_venv
    prove_no_tensorflow
    record_versions
    say "build: ready in $((SECONDS - t0)) s"
}

cmd="${1:-build}"; shift || true
case "$cmd" in
    build) build ;;
    run)
        [[ $# -gt 0 ]] || die "usage: $0 run CMD [ARGS...]"
        need_root
        [[ -e $ROOTFS$VENV_IN/.installed ]] || die "no rootfs/venv yet: run $0 build"
        ensure_binfmt
        mount_all
        say "run (aarch64, cwd $REPO): $*"
        set +e; in_root sh -c 'cd "$0" && exec "$@"' "$REPO" "$@"; rc=$?; set -e
        exit $rc ;;
    shell)
        need_root; ensure_binfmt; mount_all
        in_root TERM="${TERM:-xterm}" sh -c 'cd "$0" && exec bash -i' "$REPO" ;;
    check)
        build
        cleanup
        exec "${PYTHON:-$REPO/.venv/bin/python}" "$REPO/devices/aarch64_check.py" --emulator "$0" "$@" ;;
    clean)
        need_root
        say "removing $ROOTFS"
        rm -rf --one-file-system "$ROOTFS" "$ROOTFS.debootstrap.log" ;;
    *) die "unknown command '$cmd' (build | run CMD... | shell | check | clean)" ;;
esac
