#!/usr/bin/env bash
# wdm-bench quickstart: set up a local virtual environment if needed, then run the table or the tests.
#
#   ./quickstart.sh table [SNAKEMAKE ARGS...]   set-up (base + [workflow]), then
#                                               snakemake --cores 8 --use-conda results/table1.csv ARGS
#   ./quickstart.sh test  [PYTEST ARGS...]      set-up (base + [test]), then python -m pytest -q ARGS
#   ./quickstart.sh setup [EXTRA...]            set-up only (e.g. `setup test frd`)
#
# ARGS are passed through: `table all` builds everything (targets in ARGS replace results/table1.csv),
# `table --cores 2` uses 2 cores (the last --cores wins), `test tests/test_config.py` runs one file.
#
# Environment (all optional):
#   WDM_VENV        the virtual environment (default .venv in the repository); created if missing
#                   with `python3 -m venv` (WDM_PYTHON, default python3; Python >= 3.10).
#   WDM_TORCH       which torch build, installed before the package so that pip keeps it:
#                     auto (default)  cuda if `nvidia-smi -L` runs, else cpu
#                     cpu             WDM_TORCH_SPEC with the PyTorch CPU index
#                                     (WDM_TORCH_CPU_INDEX, default https://download.pytorch.org/whl/cpu)
#                                     added when it answers within 5 s
#                     cuda            WDM_TORCH_SPEC from the configured index (PyPI's Linux x86_64 torch
#                                     wheel is the CUDA build: several GB with its nvidia-* wheels)
#                     cu124, cu126 …  WDM_TORCH_SPEC with https://download.pytorch.org/whl/<that>
#                     skip            install no torch (one must be importable in the venv already)
#                     anything else   pip arguments, e.g. "torch==2.5.1 --index-url https://…/whl/cu121"
#   WDM_TORCH_SPEC  the torch requirement for cpu/cuda/cuNNN (default torch==2.13.0). The package asks
#                   only for torch>=2.3; 2.13.0 is the version CI runs. Why a pin and not bare `torch`:
#                   PyPI's `torch` on Linux is the CUDA build, so CPU needs the PyTorch CPU index, and
#                   where that index is not reachable (e.g. machines that reach only PyPI) the pin is
#                   what lets a local CPU wheel (`torch-2.13.0+cpu` in a pip find-links folder) be
#                   chosen over the newest CUDA `torch` on the index. With neither the CPU index nor
#                   a local CPU wheel, cpu mode gets PyPI's (CUDA) wheel; it still runs on a CPU, and
#                   the set-up says so in one line.
#   WDM_REINSTALL=1 redo the set-up even if the stamp says it is up to date.
#   WDM_PLAN=1      print what would be done (detection, set-up steps, the command) and change nothing.
#
# Idempotent: $WDM_VENV/.wdm-setup-stamp records the hash of pyproject.toml, the torch choice and the
# extras installed; the set-up runs again only when one of them changed (extras accumulate: `test` then
# `table` installs nothing new, since [test] holds snakemake). pip's output goes to
# $WDM_VENV/wdm-setup.log (its tail is printed if a step fails).
set -euo pipefail

t0=$(date +%s%N)
cd "$(dirname "${BASH_SOURCE[0]}")"

log() { echo "quickstart: $*"; }
die() { echo "quickstart: error: $*" >&2; exit 1; }
elapsed() { local t; t=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%03d s' $((t / 1000)) $((t % 1000)); }

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  table) extras=(workflow) ;;
  test) extras=(test) ;;
  setup) extras=("$@"); set -- ;;
  -h|--help|help) usage; exit 0 ;;
  *) usage >&2; die "unknown command '${cmd}': use table, test or setup" ;;
esac

VENV=${WDM_VENV:-.venv}
PYTHON=${WDM_PYTHON:-python3}
TORCH=${WDM_TORCH:-auto}
TORCH_SPEC=${WDM_TORCH_SPEC:-torch==2.13.0}
CPU_INDEX=${WDM_TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}
PLAN=${WDM_PLAN:-0}
STAMP=$VENV/.wdm-setup-stamp
SETUP_LOG=$VENV/wdm-setup.log
STAMP_VERSION=1  # bump when the set-up steps change

[ -f pyproject.toml ] || die "no pyproject.toml next to $0"

# --- which torch -------------------------------------------------------------------------------
why=
if [ "$TORCH" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && gpu=$(nvidia-smi -L 2>/dev/null) && [ -n "$gpu" ]; then
    TORCH=cuda; why="nvidia-smi: ${gpu%%$'\n'*}"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    TORCH=cpu; why="nvidia-smi found but lists no GPU"
  else
    TORCH=cpu; why="no nvidia-smi on PATH"
  fi
else
  why="WDM_TORCH=$TORCH"
fi
case $TORCH in
  cpu|cuda|skip) torch_desc="$TORCH ($TORCH_SPEC)" ;;
  cu[0-9]*) torch_desc="$TORCH ($TORCH_SPEC from https://download.pytorch.org/whl/$TORCH)" ;;
  *) torch_desc="pip install $TORCH" ;;
esac
[ "$TORCH" = skip ] && torch_desc="skip (use the torch already in the venv)"
log "torch: $torch_desc [$why]"

# --- is the set-up up to date? -------------------------------------------------------------------
key=$( { echo "v$STAMP_VERSION"; echo "torch=$TORCH"; echo "spec=$TORCH_SPEC"; cat pyproject.toml; } \
       | sha256sum | cut -c1-16)
have_extras=()
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(sed -n 's/^key=//p' "$STAMP")" = "$key" ]; then
  read -ra have_extras <<< "$(sed -n 's/^extras=//p' "$STAMP" | tr ',' ' ')"
  stamp_ok=1
else
  stamp_ok=0
fi
missing=0
for e in "${extras[@]+"${extras[@]}"}"; do
  case " ${have_extras[*]+"${have_extras[*]}"} " in *" $e "*) ;; *) missing=1 ;; esac
done
# Every extra installed so far stays installed (and is refreshed when pyproject.toml changed).
all_extras=$(printf '%s\n' "${have_extras[@]+"${have_extras[@]}"}" "${extras[@]+"${extras[@]}"}" \
             | sed '/^$/d' | sort -u | paste -sd, -)
if [ -f "$STAMP" ] && [ "$stamp_ok" = 0 ]; then
  # a stale stamp: keep its extras too
  old=$(sed -n 's/^extras=//p' "$STAMP")
  all_extras=$(printf '%s\n' "${old//,/$'\n'}" "${all_extras//,/$'\n'}" | sed '/^$/d' | sort -u | paste -sd, -)
fi

run_pip() {  # run_pip DESCRIPTION ARGS...: one log line, output to the set-up log
  local what=$1; shift
  log "$what"
  if [ "$PLAN" = 1 ]; then log "  would run: $VENV/bin/python -m pip $*"; return; fi
  echo "== pip $*" >> "$SETUP_LOG"
  "$VENV/bin/python" -m pip "$@" >> "$SETUP_LOG" 2>&1 || {
    tail -n 30 "$SETUP_LOG" >&2; die "pip $* failed (full log: $SETUP_LOG)"; }
}

if [ "$stamp_ok" = 1 ] && [ "$missing" = 0 ] && [ "${WDM_REINSTALL:-0}" != 1 ]; then
  log "set-up: $VENV is up to date (extras: ${all_extras:-none}; stamp $key), nothing to install"
else
  # 1. the virtual environment
  if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python >= 3.10 (Debian: sudo apt-get install python3 python3-venv)"
    if ! pyver=$("$PYTHON" -c 'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 10))' 2>/dev/null); then
      if [ -n "${pyver:-}" ]; then die "$PYTHON is Python $pyver; wdm-bench needs >= 3.10 (set WDM_PYTHON)"; fi
      pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      die "'$PYTHON -m venv' is unavailable (no ensurepip): install python3-venv (Debian/Ubuntu: sudo apt-get install python$pyver-venv)"
    fi
    log "venv: creating $VENV with $PYTHON (Python $pyver)"
    if [ "$PLAN" != 1 ]; then
      "$PYTHON" -m venv "$VENV" || { rm -rf "$VENV"; die "'$PYTHON -m venv $VENV' failed (Debian/Ubuntu: sudo apt-get install python$pyver-venv)"; }
      : > "$SETUP_LOG"
      run_pip "pip: upgrading pip in the new venv" install -q --upgrade pip
    fi
  else
    log "venv: using $VENV"
  fi
  [ "$PLAN" = 1 ] || rm -f "$STAMP"

  # 2. torch, before the package so that `torch>=2.3` is already satisfied
  torch_args=()
  case $TORCH in
    skip) ;;
    cpu)
      read -ra torch_args <<< "$TORCH_SPEC"
      if [ -n "$CPU_INDEX" ]; then
        if [ "$PLAN" = 1 ] || "$VENV/bin/python" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/", timeout=5)' "$CPU_INDEX" >/dev/null 2>&1; then
          torch_args+=(--extra-index-url "$CPU_INDEX")
        else
          log "torch: $CPU_INDEX is not reachable; $TORCH_SPEC from the configured index / find-links"
        fi
      fi ;;
    cuda) read -ra torch_args <<< "$TORCH_SPEC" ;;
    cu[0-9]*) read -ra torch_args <<< "$TORCH_SPEC"
              torch_args+=(--extra-index-url "https://download.pytorch.org/whl/$TORCH") ;;
    *) read -ra torch_args <<< "$TORCH" ;;
  esac
  if [ ${#torch_args[@]} -gt 0 ]; then
    run_pip "torch: pip install ${torch_args[*]}" install -q "${torch_args[@]}"
  fi

  # 3. the package and its extras
  target=.
  [ -n "$all_extras" ] && target=".[$all_extras]"
  run_pip "package: pip install -e \"$target\"" install -q -e "$target"

  if [ "$PLAN" != 1 ]; then
    # torch/version.py, read without importing torch (that takes seconds)
    got=$("$VENV/bin/python" -c 'import importlib.util as u, pathlib, runpy
s = u.find_spec("torch")
v = runpy.run_path(str(pathlib.Path(s.origin).parent / "version.py")) if s else exit("no torch")
print(v["__version__"], v.get("cuda") or "none")' 2>&1) || die "torch is not installed in $VENV: $got"
    read -r tver tcuda <<< "$got"
    log "torch: installed $tver (CUDA $tcuda)"
    if [ "$TORCH" = cpu ] && [ "$tcuda" != none ]; then
      log "torch: note: a CUDA build where CPU was asked for (no CPU index or local CPU wheel); it runs on the CPU all the same"
    fi
    printf 'key=%s\nextras=%s\ntorch=%s\nspec=%s\ntorch_installed=%s\n' \
      "$key" "$all_extras" "$TORCH" "$TORCH_SPEC" "$tver" > "$STAMP"
  fi
  if [ "$PLAN" = 1 ]; then log "set-up: plan only, nothing changed"
  else log "set-up: done in $(elapsed "$t0") (extras: ${all_extras:-none})"; fi
fi

# --- the command ---------------------------------------------------------------------------------
# table: ARGS go after the default target, unless ARGS name targets themselves (then they replace it:
# `table all` builds everything, the table included). Snakemake's own parser decides what is a target
# (argparse cannot take targets on both sides of an option, and `--forcerun RULE` takes words too).
targets_given() {
  "$VENV/bin/python" - "$@" <<'PY' 2>/dev/null
import sys
from snakemake.cli import get_argument_parser
sys.exit(0 if get_argument_parser().parse_args(sys.argv[1:]).targets else 1)
PY
}
case $cmd in
  table) if [ $# -gt 0 ] && targets_given "$@"; then run=(snakemake --cores 8 --use-conda "$@")
         else run=(snakemake --cores 8 --use-conda results/table1.csv "$@"); fi ;;
  test) run=(python -m pytest -q "$@") ;;
  setup) run=() ;;
esac
[ ${#run[@]} -gt 0 ] || { log "total $(elapsed "$t0")"; exit 0; }

if [ "$PLAN" = 1 ]; then
  log "would run (in $VENV): ${run[*]}"
  exit 0
fi
VIRTUAL_ENV=$(cd "$VENV" && pwd)
export VIRTUAL_ENV PATH="$VIRTUAL_ENV/bin:$PATH"
unset PYTHONHOME
log "run (in $VENV): ${run[*]}"
t1=$(date +%s%N)
rc=0
"${run[@]}" || rc=$?
log "$cmd finished with exit code $rc in $(elapsed "$t1") (total $(elapsed "$t0"))"
exit "$rc"
