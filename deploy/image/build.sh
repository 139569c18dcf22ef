#!/usr/bin/env bash
# Builds the Flotilla container image without pulling anything: a root filesystem made of
# the `flotilla` binary, the shared libraries it links (as ldd finds them on this
# machine, the dynamic loader included), /etc/passwd and /etc/group with a non-root user,
# and a data directory owned by that user, put into an image `FROM scratch`.
#
#   deploy/image/build.sh BINARY [IMAGE]     (`make image` calls it)
#
# BINARY is the flotilla binary to package (`make image` uses the optimised one);
# IMAGE the tag to give (default flotilla:latest; the image is also tagged with the
# binary's version). The libraries come from this machine, so build the image on the
# machine (or the same distribution) that built the binary.
set -euo pipefail

bin=${1:?usage: deploy/image/build.sh BINARY [IMAGE]}
image=${2:-flotilla:latest}
here=$(cd "$(dirname "$0")" && pwd)
# The user the node runs as inside the image; the data directory belongs to it.
uid=10001

[ -x "$bin" ] || { echo "build.sh: $bin is not an executable" >&2; exit 1; }
command -v docker >/dev/null || { echo "build.sh: docker is not installed" >&2; exit 1; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/flotilla" "$root/tmp" "$ctx/data" "$ctx/tls"
chmod 1777 "$root/tmp"

cp "$bin" "$root/usr/local/bin/flotilla"
chmod 0755 "$root/usr/local/bin/flotilla"

# Every library the binary links, at the path the loader looks for it, and the loader
# itself (the lines of ldd with an absolute path). linux-vdso is the kernel's.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
if [ -z "$libs" ]; then
  echo "build.sh: ldd found no libraries in $bin (a static binary needs none)" >&2
fi
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# The loader also lives under /lib64 on x86_64 and may be named by either path.
interp=$(readelf -l "$bin" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p' || true)
if [ -n "$interp" ] && [ ! -e "$root$interp" ]; then
  mkdir -p "$root$(dirname "$interp")"
  cp -L "$interp" "$root$interp"
fi

cat > "$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
flotilla:x:$uid:$uid:Flotilla:/var/lib/flotilla:/sbin/nologin
EOF
cat > "$root/etc/group" <<EOF
root:x:0:
flotilla:x:$uid:
EOF
# Names resolve from /etc/hosts, then DNS (docker and Kubernetes provide both files).
echo "hosts: files dns" > "$root/etc/nsswitch.conf"
# The default configuration: deploy/node.toml (node 1 of three, to be replaced).
cp "$here/../node.toml" "$root/etc/flotilla/node.toml"

cp "$here/Dockerfile" "$ctx/Dockerfile"
version=$("$bin" --version | awk '{ print $2 }')
echo "building $image (flotilla $version) from $bin with: $(echo $libs | tr '\n' ' ')"
nice -n 10 docker build --quiet --label "org.opencontainers.image.version=$version" \
  --build-arg "UID=$uid" -t "$image" -t "flotilla:$version" "$ctx"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${image%%:*}|flotilla):" || true
