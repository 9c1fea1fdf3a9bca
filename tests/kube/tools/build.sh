#!/usr/bin/env bash
# Builds the real Kubernetes control plane of the tests (tests/kube_control_plane.py) from the
# Go modules pinned in this folder's go.mod/go.sum: etcd (go.etcd.io/etcd/server/v3),
# kube-apiserver and kube-controller-manager (k8s.io/kubernetes).
#
# Output: <repo>/.kube-bin/<first 16 hex digits of sha256(go.sum)>/{etcd,kube-apiserver,
# kube-controller-manager}; the folder's path is the one line printed on stdout. A set already
# built there is reused at once. A build goes to a temporary folder that is renamed only when
# all three binaries are there, so an interrupted build never leaves half a set.
#
# A build needs Go >= 1.26 on PATH (go.mod says go 1.26.0: no GOTOOLCHAIN needed) and the Go
# module proxy. With empty Go caches it downloads about 0.6 GB of modules and compiles for about
# 6 minutes on 2 cores (GOCACHE grows by about 3.6 GB); from warm caches it links in about 17 s.
# Go's caches stay where `go env GOMODCACHE GOCACHE` says. The binaries are static
# (CGO_ENABLED=0), built with -trimpath and stripped (-s -w: about 250 MB for the three).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)

hash=$(sha256sum "$here/go.sum" | cut -c1-16)
root="$repo/.kube-bin"
out="$root/$hash"
bins=(etcd kube-apiserver kube-controller-manager)

complete() {
	local b
	for b in "${bins[@]}"; do
		[ -x "$out/$b" ] || return 1
	done
}

if complete; then
	echo "$out"
	exit 0
fi

# Only a build needs Go: a set already built is used without it.
if ! command -v go >/dev/null 2>&1; then
	echo "tests/kube/tools/build.sh: 'go' is not on PATH; install Go >= 1.26 to build" \
		"etcd, kube-apiserver and kube-controller-manager for the Kubernetes tests" >&2
	exit 1
fi

mkdir -p "$root"
# One build at a time (two test runs starting together): the second waits, then reuses the set.
exec 9>"$root/.lock"
if command -v flock >/dev/null 2>&1; then
	flock 9
	if complete; then
		echo "$out"
		exit 0
	fi
fi

tmp=$(mktemp -d "$root/.build-$hash.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The version that kube-apiserver reports on /version (k8s's own build sets it the same way).
k8s_version=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
cb=k8s.io/component-base/version
ldflags="-s -w -X $cb.gitVersion=$k8s_version -X $cb.gitMajor=1 -X $cb.gitMinor=$k8s_minor"
ldflags="$ldflags -X $cb.gitTreeState=clean"

echo "building etcd, kube-apiserver and kube-controller-manager into $out" >&2
start=$(date +%s)
# One `go build` for the three: it compiles the packages they share once, 2 at a time on 2 cores.
# The -X flags name k8s.io packages that etcd does not link; the linker ignores them there.
(
	cd "$here"
	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$tmp/" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		go.etcd.io/etcd/server/v3
)
# go names the binary of go.etcd.io/etcd/server/v3 after its path without the major version.
mv "$tmp/server" "$tmp/etcd"
echo "built in $(($(date +%s) - start)) s" >&2

# A partial set left by hand (a binary deleted) is replaced whole.
chmod 755 "$tmp"
rm -rf "$out"
mv -T "$tmp" "$out"
trap - EXIT
echo "$out"
