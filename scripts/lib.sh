# Shared by scripts/start and scripts/test: find a Python >= 3.11 and make the project venv.
# THREADLINE_PYTHON picks the interpreter; otherwise the first suitable one on PATH wins.

find_python() {
    local candidates=("${THREADLINE_PYTHON:-}" python3 python3.13 python3.12 python3.11 python)
    local c
    for c in "${candidates[@]}"; do
        [ -n "$c" ] || continue
        command -v "$c" >/dev/null 2>&1 || continue
        if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    echo "error: Threadline needs Python >= 3.11; set THREADLINE_PYTHON to one" >&2
    return 1
}

# ensure_venv EXTRAS: create .venv when missing and install the project (editable) with EXTRAS.
ensure_venv() {
    local extras="$1"
    if [ ! -x .venv/bin/python ]; then
        "$(find_python)" -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
    fi
    .venv/bin/python -m pip install -q -e ".${extras}"
}

# ensure_sandbox_tools: the isolating sandbox backend (the default) needs bubblewrap. Install it with the
# system's package manager when we may (root); otherwise stop with the exact command to run.
ensure_sandbox_tools() {
    [ "${THREADLINE_SANDBOX_BACKEND:-bwrap}" = "bwrap" ] || return 0
    [ "$(uname -s)" = "Linux" ] || return 0
    command -v bwrap >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing bubblewrap (the sandbox isolation) with apt-get ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null; }
    elif [ "$(id -u)" = "0" ] && command -v dnf >/dev/null 2>&1; then
        dnf install -y -q bubblewrap
    fi
    if ! command -v bwrap >/dev/null 2>&1; then
        echo "error: Threadline isolates every agent with bubblewrap, which is not installed. Run:" >&2
        echo "    sudo apt-get install bubblewrap      (Debian/Ubuntu; Fedora: sudo dnf install bubblewrap)" >&2
        echo "or, for a single trusted user only, run without isolation: THREADLINE_SANDBOX_BACKEND=process" >&2
        return 1
    fi
}

# ensure_browser: the console's browser tests (tests/test_console.py) drive Debian's Chromium. Install it with
# apt-get when we may (root); otherwise those tests skip and say why. Playwright's own browser downloads are
# never used.
ensure_browser() {
    [ -n "${THREADLINE_SKIP_BROWSER:-}" ] && return 0
    [ "$(uname -s)" = "Linux" ] || return 0
    command -v chromium >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing chromium (for the console's browser tests) with apt-get ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
            || echo "warning: chromium could not be installed; the console's browser tests will be skipped" >&2
    fi
    return 0
}
