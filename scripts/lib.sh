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
