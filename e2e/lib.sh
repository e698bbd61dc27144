# shellcheck shell=bash
# e2e/lib.sh: what the scripts of e2e/ share, sourced (never run):
#   LATCHKEY_CACHE_DIR   the build and tool cache (LATCHKEY_CACHE, default ~/.cache/latchkey)
#   say / die            messages on stderr, prefixed with the script's name (LK_SCRIPT)
#   free_port            a free TCP port on 127.0.0.1, outside the ephemeral range
#   pip_tool_venv DIR SPEC BIN   install a PyPI tool (SPEC=name==version) into a venv
#                        of its own at DIR, unless DIR/bin/BIN is there already
# The versions pinned for the whole suite are in versions.env, sourced here too.

LK_E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$LK_E2E/versions.env"
# shellcheck disable=SC2034 # used by the scripts that source this file
LATCHKEY_CACHE_DIR=${LATCHKEY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/latchkey}
LK_SCRIPT=${LK_SCRIPT:-$(basename "$0")}

say() { printf '%s: %s\n' "$LK_SCRIPT" "$*" >&2; }
die() { printf '%s: error: %s\n' "$LK_SCRIPT" "$*" >&2; exit 1; }

# The control plane's ports. A port the OS picks (bind to 0) comes from the
# ephemeral range, where any outgoing connection may take it before the
# server binds it; so take one from 10000-19999 that binds now, unless the
# ephemeral range overlaps that window (then the OS picks). The tests' own picker
# (tests/common/ports.rs) uses 20000-29999, so the two never race.
free_port() {
  python3 - <<'PY'
import random, socket
low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
start, end = 10000, 20000
candidates = list(range(start, end)) if end <= low or start > high else [0]
random.shuffle(candidates)
for port in candidates:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
else:
    raise SystemExit("free_port: no free TCP port on 127.0.0.1 in %d-%d" % (start, end - 1))
PY
}

pip_tool_venv() {
  local dir=$1 spec=$2 bin=$3
  [ -x "$dir/bin/$bin" ] && return 0
  command -v python3 >/dev/null || die "python3 is needed to install $spec"
  say "installing $spec (PyPI) into $dir"
  # A venv cannot be moved (its scripts name its path): build it in place
  # and remove it if any step fails, so a half-made one is never used.
  rm -rf "$dir"
  if ! { python3 -m venv "$dir" &&
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$spec" &&
    "$dir/bin/$bin" --version >/dev/null; }; then
    rm -rf "$dir"
    die "installing $spec from PyPI failed"
  fi
}
