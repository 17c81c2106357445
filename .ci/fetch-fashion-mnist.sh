#!/usr/bin/env bash
# Fetch Fashion-MNIST from Debian's dataset-fashion-mnist package without root:
# download the .deb and unpack it into DEST/fashion-mnist.
set -euo pipefail
dest=${1:?usage: fetch-fashion-mnist.sh DEST}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download dataset-fashion-mnist >/dev/null 2>&1; then
  # A fresh machine may have no package lists yet.
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download dataset-fashion-mnist >/dev/null
fi
dpkg-deb -x dataset-fashion-mnist_*.deb unpacked
rm -rf "$dest/fashion-mnist.tmp"
cp -r unpacked/usr/share/datasets/fashion-mnist "$dest/fashion-mnist.tmp"
rm -rf "$dest/fashion-mnist"
mv "$dest/fashion-mnist.tmp" "$dest/fashion-mnist"
echo "fashion-mnist -> $dest/fashion-mnist"
