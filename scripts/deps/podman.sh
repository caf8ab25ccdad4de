#!/usr/bin/env bash
# Podman (Debian package) set up so llem's container launcher and the container tests can use it.
# Idempotent; run as root on Debian bookworm. Re-running changes nothing once set up.
#
#  - installs `podman` and `runc` when either is missing (one `apt-get update`), with apt's default
#    recommends (buildah, catatonit, fuse-overlayfs, slirp4netns, uidmap: rootless use and --init;
#    running as root needs none of them, but that is the combination measured to work);
#  - makes sure /etc/containers/containers.conf holds the settings that make podman work in
#    sandboxed machines like ours (see /work/shared/notes/containers.md):
#      [containers] default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
#          podman's defaults (nofile 1048576) exceed the hard limit and the sandbox lacks
#          CAP_SYS_RESOURCE: "setrlimit RLIMIT_NOFILE: Operation not permitted".
#      [engine] runtime = "runc"
#          crun, podman's default runtime, fails with "cgroups in hybrid mode not supported".
#      [engine] cgroup_manager = "cgroupfs"
#          no systemd is running here to manage cgroups.
#    Other settings in an existing file are kept; a key we set that had another value is replaced
#    (the previous file is saved once as containers.conf.llem-bak).
#  - checks that `podman info` works.
#
# Environment: PODMAN_NOFILE / PODMAN_NPROC override the ulimits written (default 1024:1024);
# CONTAINERS_CONF_PATH writes another file than /etc/containers/containers.conf.
set -euo pipefail

CONF="${CONTAINERS_CONF_PATH:-/etc/containers/containers.conf}"
NOFILE="${PODMAN_NOFILE:-1024:1024}"
NPROC="${PODMAN_NPROC:-1024:1024}"

if [ "$(id -u)" -ne 0 ]; then
    echo "podman: must run as root (installs Debian packages, writes $CONF)" >&2
    exit 1
fi

# --- packages ------------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo "podman: installing ${missing[*]}"
    apt-get update
    apt-get install -y "${missing[@]}"
else
    echo "podman: already installed ($(podman --version))"
fi

# --- containers.conf -----------------------------------------------------------------------------
# set_key FILE SECTION KEY VALUE: make `KEY = VALUE` the (only) setting of KEY in [SECTION].
# A multi-line array value of an existing key is replaced as a whole. Prints "changed" on change.
set_key() {
    local file="$1" section="$2" key="$3" value="$4" tmp
    tmp="$(mktemp "${file}.XXXXXX")"
    awk -v section="$section" -v key="$key" -v value="$value" '
        function header(line,   s) {
            s = line
            sub(/^[ \t]*\[+[ \t]*/, "", s); sub(/[ \t]*\]+[ \t]*(#.*)?$/, "", s)
            return s
        }
        function emit() { print key " = " value; done = 1 }
        function flush() { for (; blanks > 0; blanks--) print "" }
        BEGIN { cur = ""; done = 0; seen_section = 0; skipping = 0; changed = 0; blanks = 0 }
        {
            if (skipping) {                      # rest of a multi-line array being replaced
                if ($0 ~ /\]/) skipping = 0
                next
            }
            if ($0 ~ /^[ \t]*$/) { blanks++; next }  # held back: a new key goes above them
            if ($0 ~ /^[ \t]*\[/) {              # a table header
                if (cur == section && !done) { emit(); changed = 1 }
                flush()
                cur = header($0)
                if (cur == section) seen_section = 1
                print; next
            }
            flush()
            if (cur == section && $0 ~ ("^[ \t]*" key "[ \t]*=")) {
                if (done) { changed = 1; next }  # a duplicate: drop it
                line = $0
                rhs = line; sub(/^[^=]*=[ \t]*/, "", rhs); sub(/[ \t]*(#.*)?$/, "", rhs)
                if (rhs != value) changed = 1
                # An array opened but not closed on this line continues on the next ones.
                if (rhs ~ /^\[/ && rhs !~ /\]/) { skipping = 1; changed = 1 }
                emit(); next
            }
            print
        }
        END {
            if (cur == section && !done) { emit(); changed = 1 }
            flush()
            if (!seen_section) { print ""; print "[" section "]"; emit(); changed = 1 }
            if (changed) print "changed" > "/dev/stderr"
        }
    ' "$file" >"$tmp" 2>"$tmp.log"
    if grep -qx changed "$tmp.log"; then
        cat "$tmp" >"$file"     # keep the file's owner and mode
        echo "podman: $CONF: [$section] $key = $value"
    fi
    rm -f "$tmp" "$tmp.log"
}

mkdir -p "$(dirname "$CONF")"
if [ ! -e "$CONF" ]; then
    printf '# Written by llem scripts/deps/podman.sh; see docs/containers.md.\n' >"$CONF"
elif [ ! -e "$CONF.llem-bak" ]; then
    before="$(cat "$CONF")"
fi

ulimits="[\"nofile=$NOFILE\", \"nproc=$NPROC\"]"
set_key "$CONF" containers default_ulimits "$ulimits"
set_key "$CONF" engine runtime '"runc"'
set_key "$CONF" engine cgroup_manager '"cgroupfs"'

if [ -n "${before+x}" ] && [ "$before" != "$(cat "$CONF")" ]; then
    printf '%s\n' "$before" >"$CONF.llem-bak"
    echo "podman: previous $CONF saved as $CONF.llem-bak"
fi

# --- check ---------------------------------------------------------------------------------------
if ! info="$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Store.GraphDriverName}}' 2>&1)"; then
    echo "podman: 'podman info' failed:" >&2
    echo "$info" >&2
    exit 1
fi
echo "podman: ok ($(podman --version); runtime, cgroup manager, storage: $info)"
