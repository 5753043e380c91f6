# Shared by setup-env.sh, lock.sh and test-latest.sh (sourced from the repository root).

# Where the CPU torch wheel comes from: this workplace's local wheel folder, else PyTorch's CPU index.
DEOS_TORCH_WHEELS="${DEOS_TORCH_WHEELS:-/opt/wheels}"
if [ -d "$DEOS_TORCH_WHEELS" ]; then
    TORCH_SOURCES=(--find-links "$DEOS_TORCH_WHEELS")
else
    TORCH_SOURCES=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

# The editable install's build backend, as pyproject.toml's [build-system] requires it (one per line).
build_requires() {
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))'
}

# Print the path of the pinned uv (the resolver of lock.sh and test-latest.sh), installing it into
# .tools/uv on first use. Setting up the project itself needs only pip.
UV_VERSION=0.13.9
uv_path() {
    local uv=.tools/uv/bin/uv
    if ! [ -x "$uv" ] || [ "$("$uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
        python3 -m venv .tools/uv >&2
        .tools/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2
    fi
    echo "$PWD/$uv"
}

# `uv pip compile` of deos with its test extras plus the requirements read from stdin, for CPython
# 3.11 on x86-64 Linux; extra arguments follow (resolution, output, hashes...).
uv_compile() {
    local uv
    uv="$(uv_path)"
    "$uv" pip compile --quiet pyproject.toml - --extra test "${TORCH_SOURCES[@]}" --index-strategy unsafe-best-match \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 "$@"
}
