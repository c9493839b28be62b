#!/usr/bin/env bash
# Installs the real tools some tests use, if they are missing (CI runs as
# root on Debian). Tests that need a tool that is not installed fail and
# name this script.
#   promtool (Debian `prometheus`): validates the /metrics exposition.
#   chromium (Debian `chromium`): renders the cluster page headless.
#   systemd-analyze (Debian `systemd`): verifies the example unit.
#   PyYAML (Debian `python3-yaml`, else PyPI): parses the Kubernetes example.
# schemathesis (PyPI) for scripts/fuzz-http.sh is installed by that script.
set -euo pipefail

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-yaml)

if ((${#need_apt[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "install-tools: need root to apt-get install ${need_apt[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: only the binaries, not a running service.
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# A python3 without PyYAML (a pyenv one, say): PyPI's, for this user.
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install -q --user pyyaml 2>/dev/null || apt-get install -y -qq python3-yaml >/dev/null
fi
python3 -c 'import yaml; print("PyYAML", yaml.__version__)'
promtool --version 2>&1 | head -1
chromium --version 2>&1 | head -1
