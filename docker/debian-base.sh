#!/usr/bin/env bash
# Build a Debian 12 image with Python 3.11 from Debian's own packages, for hosts that reach a
# Debian mirror and PyPI but no image registry:
#   docker/debian-base.sh [TAG]          # default ddnm-debian-base:bookworm; kept once built
#   docker build --build-arg BASE_IMAGE=ddnm-debian-base:bookworm -f docker/api.Dockerfile .
# It behaves as the python:3.11 images do where the Dockerfiles need it: `python` and `pip` on
# the PATH, pip free to install system-wide. Needs root, debootstrap and a Docker engine.
set -euo pipefail
tag=${1:-ddnm-debian-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" > /dev/null 2>&1; then
    echo "debian-base: $tag is there" >&2
    exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$root" "$mirror"
# the certificate authorities this host adds (an egress proxy's, say): pip in the image then
# reaches PyPI as the host does
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
chroot "$root" update-ca-certificates
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import --change 'CMD ["python3"]' - "$tag"
echo "debian-base: built $tag ($(chroot "$root" python3 --version))" >&2
