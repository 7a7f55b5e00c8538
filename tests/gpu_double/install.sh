#!/usr/bin/env bash
# Install the gpuhub NVIDIA test double (TEST DEVICE ONLY; see README.md).
#
#   tests/gpu_double/install.sh [INVENTORY.json]   install (default: inventory-4.json)
#   tests/gpu_double/install.sh --uninstall        remove it again
#
# Installs
#   /usr/local/lib/gpuhub-gpu-double/bin/nvidia-container-runtime-hook  (fake OCI hook)
#   /usr/local/lib/gpuhub-gpu-double/container/nvidia-smi               (copied into containers)
#   /etc/gpuhub-gpu-double/inventory.json                               (the fake GPUs)
#   /etc/gpuhub-gpu-double/inventory.tsv + .../host/nvidia-smi          (opt-in host view)
#   /var/lib/gpuhub-gpu-double/state/  (tests write gpus.tsv here: utilisation, memory
#                                       use, processes; bind-mounted into GPU containers)
# Docker 20.10 enables `--gpus` only if nvidia-container-runtime-hook is on
# dockerd's PATH when dockerd starts, so (re)start dockerd with
#   PATH=/usr/local/lib/gpuhub-gpu-double/bin:$PATH dockerd ...
# (.ci/provision does that). Nothing is put on the host's normal PATH: the host
# itself still looks GPU-less (no host nvidia-smi). A test that wants the host
# to "have" the fake GPUs runs /usr/local/lib/gpuhub-gpu-double/host/nvidia-smi
# explicitly (e.g. NVIDIA_SMI=that path for `invoke up`): it lists all of them.
# Refuses (exit 1) on a machine with a real NVIDIA driver or container toolkit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PREFIX=/usr/local/lib/gpuhub-gpu-double
ETC=/etc/gpuhub-gpu-double
STATE=/var/lib/gpuhub-gpu-double/state   # the hook's default GPUHUB_GPU_DOUBLE_STATE
VARLIB=${STATE%/*}
MARKER='gpuhub NVIDIA \*test double\*'

say() { printf '[gpu-double] %s\n' "$*"; }
die() { printf '[gpu-double] ERROR: %s\n' "$*" >&2; exit 1; }

# Is there a real NVIDIA driver / container toolkit here? (prints what it found)
real_nvidia() {
  local found=0 name p
  for p in /dev/nvidiactl /dev/nvidia0 /proc/driver/nvidia; do
    [ -e "$p" ] && { echo "$p exists"; found=1; }
  done
  for name in nvidia-container-runtime-hook nvidia-container-cli nvidia-container-toolkit \
              nvidia-container-runtime nvidia-ctk; do
    for p in $(type -ap "$name" 2>/dev/null) /usr/bin/$name /usr/sbin/$name /usr/local/bin/$name; do
      [ -e "$p" ] || continue
      case "$(readlink -f "$p")" in "$PREFIX"/*) continue ;; esac
      grep -q "$MARKER" "$p" 2>/dev/null && continue
      echo "real $name at $p"; found=1
    done
  done
  if command -v dpkg-query >/dev/null; then
    for name in nvidia-container-toolkit libnvidia-container-tools libnvidia-container1; do
      if dpkg-query -W -f '${Status}' "$name" 2>/dev/null | grep -q 'install ok installed'; then
        echo "Debian package $name is installed"; found=1
      fi
    done
  fi
  return $((1 - found))
}

case "${1:-}" in
  -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
  --check-real) real_nvidia; exit $? ;;   # exit 0 = a real NVIDIA stack is present
  --uninstall)
    rm -rf "$PREFIX" "$ETC" "$VARLIB"
    say "removed $PREFIX, $ETC and $VARLIB (restart dockerd without it on PATH to disable --gpus)"
    exit 0 ;;
esac

[ "$(id -u)" = 0 ] || die "run as root"
if why=$(real_nvidia); then
  die "a real NVIDIA driver/toolkit is present; the test double must never be installed on a real GPU host:
$why"
fi
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 is needed by the fake hook (apt-get install python3)"

inventory=${1:-$here/inventory-4.json}
[ -r "$inventory" ] || die "inventory $inventory not readable"
install -d -m 0755 "$PREFIX/bin" "$PREFIX/container" "$PREFIX/host" "$ETC" "$VARLIB" "$STATE"
ngpus=$(/usr/bin/python3 - "$inventory" "$ETC/inventory.tsv" "$here/nvidia-container-runtime-hook" <<'PY'
import importlib.machinery, importlib.util, json, re, sys
inv = json.load(open(sys.argv[1]))
gpus = inv["gpus"]
assert isinstance(gpus, list), "gpus must be a list"
seen = set()
for g in gpus:
    assert isinstance(g["index"], int) and g["index"] not in seen, "bad/duplicate index %r" % g
    assert str(g["uuid"]).startswith("GPU-"), "uuid must start with GPU-: %r" % g
    assert "\t" not in g.get("name", "") and "\n" not in g.get("name", ""), "bad name %r" % g
    assert g.get("mig_mode", "[N/A]") in ("Enabled", "Disabled", "[N/A]"), "bad mig_mode %r" % g
    assert not g.get("mig") or g.get("mig_mode") == "Enabled", "MIG instances need mig_mode Enabled: %r" % g
    for m in g.get("mig", []):
        # R470+ names: MIG-<uuid> (the old MIG-GPU-<uuid>/<gi>/<ci> is gone with R470)
        assert re.fullmatch(r"MIG-[0-9a-f-]+", str(m["uuid"])), "MIG uuid must be MIG-<uuid>: %r" % m
        assert re.fullmatch(r"[0-9]+g\.[0-9]+gb", str(m["profile"])), "bad MIG profile %r" % m
        assert isinstance(m["memory_mib"], int), "bad MIG memory_mib %r" % m
    seen.add(g["index"])
# the same TSV the hook writes into containers, granting all GPUs (host view)
loader = importlib.machinery.SourceFileLoader("gpu_double_hook", sys.argv[3])
hook = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
loader.exec_module(hook)
with open(sys.argv[2], "wb") as f:
    f.write(hook.to_tsv(inv, "all"))
print(len(gpus))
PY
) || die "invalid inventory $inventory"

install -m 0755 "$here/nvidia-container-runtime-hook" "$PREFIX/bin/nvidia-container-runtime-hook"
install -m 0755 "$here/nvidia-smi" "$PREFIX/container/nvidia-smi"
# The CDI path of Docker >= 29.2, for a dockerd whose default runtime is $PREFIX/cdi/runtime
# (.ci/provision with GPUHUB_GPU_DOUBLE_PATH=cdi): the runtime shim next to the hook.
install -d -m 0755 "$PREFIX/cdi"
install -m 0755 "$here/nvidia-container-runtime" "$PREFIX/bin/nvidia-container-runtime"
printf '#!/bin/sh\n# gpuhub NVIDIA *test double*: the CDI path (see %s)\nGPUHUB_GPU_DOUBLE_PATH=cdi exec %s "$@"\n' \
  "$PREFIX/bin/nvidia-container-runtime" "$PREFIX/bin/nvidia-container-runtime" >"$PREFIX/cdi/runtime"
chmod 0755 "$PREFIX/cdi/runtime"
install -m 0644 "$inventory" "$ETC/inventory.json"
cat >"$PREFIX/host/nvidia-smi" <<SH
#!/bin/sh
# gpuhub NVIDIA test double: host-side view of ALL fake GPUs (opt-in; not on PATH).
# Utilisation, memory use and processes come from the state the tests write, the
# directory the hook bind-mounts into every GPU container: both sides agree.
GPUHUB_FAKE_GPU_STATE="\${GPUHUB_FAKE_GPU_STATE:-\${GPUHUB_GPU_DOUBLE_STATE:-$STATE}/gpus.tsv}" \\
GPUHUB_FAKE_SMI_HOST=1 GPUHUB_FAKE_GPUS_FILE=$ETC/inventory.tsv exec $PREFIX/container/nvidia-smi "\$@"
SH
chmod 0755 "$PREFIX/host/nvidia-smi"
install -m 0755 "$here/nvidia-ctk" "$PREFIX/host/nvidia-ctk"
say "installed fake hook  $PREFIX/bin/nvidia-container-runtime-hook"
say "installed fake smi   $PREFIX/container/nvidia-smi (copied into --gpus containers)"
say "inventory            $ETC/inventory.json ($ngpus fake GPUs, from $inventory)"
say "opt-in host view     $PREFIX/host/nvidia-smi, $PREFIX/host/nvidia-ctk (not on PATH: the host stays GPU-less)"
say "GPU state            $STATE/gpus.tsv (written by the tests; see tests/support/gpu_state.py)"
say "hook log             /var/log/fake-nvidia-hook.log"
say "CDI path runtime     $PREFIX/cdi/runtime (dockerd --add-runtime ...=it --default-runtime ...)"

# Does the running dockerd (if any) already see the hook?
pid=$(pidof dockerd 2>/dev/null | awk '{print $1}') || true
if [ -n "${pid:-}" ] && tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q "^PATH=.*$PREFIX/bin"; then
  say "running dockerd (pid $pid) has $PREFIX/bin on its PATH: --gpus is enabled"
else
  say "to enable --gpus, (re)start dockerd with PATH=$PREFIX/bin:\$PATH"
fi
