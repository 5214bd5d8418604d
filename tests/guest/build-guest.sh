#!/bin/bash
# Build the vmdnet test guest: a Debian 12 6.1 cloud kernel and a busybox initramfs holding
# the virtio-net modules, iperf3 and ethtool, with tests/guest/init as /init.
#
#   build-guest.sh [--force] [OUTDIR]        (default OUTDIR: tests/guest/out, git-ignored)
#
# Outputs: OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.gz, OUTDIR/root (the initramfs tree, whose
# static busybox and iperf3 the host side of tests may run too) and OUTDIR/manifest.txt (the
# package versions used). Downloaded .deb files are cached in OUTDIR/debs.
#
# Cached: when the outputs are newer than this script, init and moddeps.py, it does nothing.
# Only Debian packages are used: apt-get download (never installed), dpkg-deb -x to extract;
# the host gets at most cpio/gzip/python3 through apt-get install when they are missing.
# VN_GUEST_KERNEL_PKG=linux-image-6.1.0-NN-cloud-amd64 pins the kernel package.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
FORCE=0
if [ "${1:-}" = "--force" ]; then
	FORCE=1
	shift
fi
OUTDIR=${1:-$HERE/out}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
INPUTS=("$HERE/build-guest.sh" "$HERE/init" "$HERE/moddeps.py" "$HERE/udhcpc.script")
OUTPUTS=("$OUTDIR/vmlinuz" "$OUTDIR/initramfs.cpio.gz" "$OUTDIR/root/bin/busybox")

# The virtio-net stack of Debian's 6.1 kernel, in the order named by DESIGN.md; moddeps.py
# adds whatever else their .modinfo says they depend on.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	failover net_failover virtio_net)
# Userland packages: busybox-static is the whole base system; iperf3 and ethtool are
# dynamic, so their libraries come along (the ELF loader lists which ones are needed).
USER_PKGS=(busybox-static iperf3 libiperf0 libsctp1 libssl3 libc6 ethtool libmnl0)
# Dynamic binaries copied into the guest, relative to the extracted tree.
DYN_BINS=(usr/bin/iperf3 sbin/ethtool)
# Debian 12 puts libc in /lib and the others in /usr/lib; the guest gets them all in /lib.
LIBDIR=lib/x86_64-linux-gnu
LIBPATH=lib/x86_64-linux-gnu:usr/lib/x86_64-linux-gnu
# The PT_INTERP path of the binaries and the file it names in the libc6 package.
LOADER=lib64/ld-linux-x86-64.so.2
LOADER_FILE=lib/x86_64-linux-gnu/ld-linux-x86-64.so.2

log() { echo "build-guest: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

up_to_date() {
	[ "$FORCE" = 0 ] || return 1
	local out in
	for out in "${OUTPUTS[@]}"; do
		[ -e "$out" ] || return 1
		for in in "${INPUTS[@]}"; do
			[ "$out" -nt "$in" ] || return 1
		done
	done
}

# Install the few host tools the build itself runs, only when absent.
need_tools() {
	local missing=() tool pkg
	for tool in cpio:cpio gzip:gzip python3:python3 dpkg-deb:dpkg flock:util-linux; do
		pkg=${tool#*:}
		command -v "${tool%%:*}" >/dev/null || missing+=("$pkg")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing build tools: ${missing[*]}"
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
	fi
}

APT_UPDATED=0
apt_update_once() {
	[ "$APT_UPDATED" = 1 ] && return 0
	log "apt-get update"
	apt-get update -qq >&2
	APT_UPDATED=1
	VERSIONS=()
}

# load_versions PKG...: remember the version apt would download for each PKG (one
# apt-cache call for all: each call costs a second or more on a busy machine).
declare -A VERSIONS=()
load_versions() {
	local pkg version
	while read -r pkg version; do
		[ -n "${VERSIONS[$pkg]:-}" ] || VERSIONS[$pkg]=$version
	done < <(apt-cache show --no-all-versions "$@" 2>/dev/null |
		awk '/^Package: /{p=$2} /^Version: /{print p, $2}')
}

# candidate_version PKG: the version apt would download, empty if unknown.
candidate_version() {
	[ -n "${VERSIONS[$1]:-}" ] || load_versions "$1"
	echo "${VERSIONS[$1]:-}"
}

# The real kernel package behind the linux-image-cloud-amd64 metapackage.
kernel_package() {
	if [ -n "${VN_GUEST_KERNEL_PKG:-}" ]; then
		echo "$VN_GUEST_KERNEL_PKG"
		return
	fi
	apt-cache show --no-all-versions linux-image-cloud-amd64 |
		sed -n 's/^Depends: .*\(linux-image-6\.1\.[^ ,]*-cloud-amd64\).*/\1/p' | head -n1
}

# fetch PKG: make sure DEBS holds the candidate version of PKG; set DEB to its path.
# apt-get download names files PKG_VERSION_ARCH.deb with the epoch colon as %3a.
fetch() {
	local pkg=$1 version
	version=$(candidate_version "$pkg")
	if [ -z "$version" ]; then
		apt_update_once
		version=$(candidate_version "$pkg")
		[ -n "$version" ] || die "no Debian package $pkg"
	fi
	DEB=$(deb_path "$pkg" "$version")
	[ -z "$DEB" ] || return 0
	log "downloading $pkg $version"
	# A stale package list names files the mirror no longer has: refresh once and retry.
	if ! (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$version" >&2); then
		apt_update_once
		version=$(candidate_version "$pkg")
		(cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$version" >&2)
	fi
	DEB=$(deb_path "$pkg" "$version")
	[ -n "$DEB" ] || die "download of $pkg $version left no .deb"
}

# deb_path PKG VERSION: the cached .deb of that version, empty if none.
deb_path() {
	local deb
	for deb in "$DEBS/${1}_${2//:/%3a}_"*.deb; do
		if [ -f "$deb" ]; then
			echo "$deb"
			return
		fi
	done
}

# in_tree PATH: follow the symlinks of PATH (a file under EXTRACT) inside EXTRACT: the
# packages' absolute links (lib64/ld-linux...) must not lead to the host's files.
in_tree() {
	local path=$1 target hops=0
	while [ -L "$path" ]; do
		hops=$((hops + 1))
		[ $hops -le 16 ] || die "symlink loop at $1"
		target=$(readlink "$path")
		case "$target" in
		/*) path=$EXTRACT$target ;;
		*) path=$(dirname "$path")/$target ;;
		esac
	done
	echo "$path"
}

# copy_dynamic BIN: copy BIN and the shared libraries it needs from the extracted tree into
# the guest root. The extracted loader resolves them (`ld.so --list`); any library found
# outside the extracted tree is a package missing from USER_PKGS.
copy_dynamic() {
	local bin=$1 line path
	install -D -m 0755 "$EXTRACT/$bin" "$ROOT/$bin"
	while read -r line; do
		case "$line" in
		*"=> not found"*) die "$bin needs ${line%% *}, add its package to USER_PKGS" ;;
		*"=> "*) path=${line#*=> } path=${path%% (*} ;;
		*) continue ;;
		esac
		case "$path" in
		"$EXTRACT"/*) ;;
		*) die "$bin needs $path, not in the downloaded packages: add it to USER_PKGS" ;;
		esac
		install -D -m 0755 "$(in_tree "$path")" "$ROOT/$LIBDIR/$(basename "$path")"
	done < <("$EXTRACT/$LOADER_FILE" --inhibit-cache \
		--library-path "$EXTRACT/${LIBPATH//:/:$EXTRACT/}" --list "$EXTRACT/$bin")
}

build_root() {
	local kver=$1 app
	rm -rf "$ROOT"
	mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root,lib/modules}
	install -m 0755 "$EXTRACT/bin/busybox" "$ROOT/bin/busybox"
	# One symlink per applet; the static busybox runs on the host too.
	for app in $("$ROOT/bin/busybox" --list-full); do
		[ -e "$ROOT/$app" ] || ln -s /bin/busybox "$ROOT/$app"
	done
	for app in "${DYN_BINS[@]}"; do
		rm -f "$ROOT/$app"
		copy_dynamic "$app"
	done
	install -D -m 0755 "$EXTRACT/$LOADER_FILE" "$ROOT/$LOADER"
	python3 "$HERE/moddeps.py" "$EXTRACT/lib/modules/$kver" "$ROOT/lib/modules" "${MODULES[@]}" >&2
	install -m 0755 "$HERE/init" "$ROOT/init"
	install -D -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc/default.script"
	echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
	echo "root:x:0:" >"$ROOT/etc/group"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOT/etc/hosts"
}

# A reproducible newc archive: fixed owner and timestamps, sorted names, device-independent
# inode numbers, no gzip name/time: the same packages give the same bytes.
pack_initramfs() {
	find "$ROOT" -exec touch -h -d @0 {} +
	(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
		gzip -n -9 >"$OUTDIR/initramfs.cpio.gz.tmp"
	mv "$OUTDIR/initramfs.cpio.gz.tmp" "$OUTDIR/initramfs.cpio.gz"
}

main() {
	if up_to_date; then
		log "up to date: $OUTDIR"
		return 0
	fi
	need_tools
	# One build at a time per OUTDIR (parallel test runs share it).
	exec 9>"$OUTDIR/.lock"
	flock -w 900 9 || die "timed out waiting for $OUTDIR/.lock"
	if up_to_date; then
		log "up to date: $OUTDIR (built by another run)"
		return 0
	fi
	DEBS=$OUTDIR/debs
	EXTRACT=$OUTDIR/extract
	# Built aside and swapped in at the end: a test using OUTDIR/root meanwhile keeps working.
	ROOT=$OUTDIR/root.new
	mkdir -p "$DEBS"
	apt-cache show --no-all-versions linux-image-cloud-amd64 >/dev/null 2>&1 || apt_update_once
	local kpkg kver pkg
	kpkg=$(kernel_package)
	[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 to a 6.1 kernel package"
	load_versions "$kpkg" "${USER_PKGS[@]}"
	rm -rf "$EXTRACT"
	mkdir -p "$EXTRACT"
	: >"$OUTDIR/manifest.txt.tmp"
	for pkg in "$kpkg" "${USER_PKGS[@]}"; do
		fetch "$pkg"
		dpkg-deb -x "$DEB" "$EXTRACT"
		echo "$pkg $(candidate_version "$pkg")" >>"$OUTDIR/manifest.txt.tmp"
	done
	kver=${kpkg#linux-image-}
	kver=${kver%-unsigned}
	[ -f "$EXTRACT/boot/vmlinuz-$kver" ] || die "no /boot/vmlinuz-$kver in $kpkg"
	build_root "$kver"
	pack_initramfs
	install -m 0644 "$EXTRACT/boot/vmlinuz-$kver" "$OUTDIR/vmlinuz.tmp"
	mv "$OUTDIR/vmlinuz.tmp" "$OUTDIR/vmlinuz"
	mv "$OUTDIR/manifest.txt.tmp" "$OUTDIR/manifest.txt"
	rm -rf "$OUTDIR/root.old"
	if [ -d "$OUTDIR/root" ]; then mv "$OUTDIR/root" "$OUTDIR/root.old"; fi
	mv "$ROOT" "$OUTDIR/root"
	rm -rf "$OUTDIR/root.old"
	# The root tree was stamped with time 0 for the archive: mark it fresh for up_to_date.
	touch "$OUTDIR/root/bin/busybox"
	rm -rf "$EXTRACT"
	log "built $OUTDIR (kernel $kver, $(du -h "$OUTDIR/initramfs.cpio.gz" | cut -f1) initramfs)"
}

main
