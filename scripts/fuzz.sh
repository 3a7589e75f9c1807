#!/usr/bin/env bash
# Fuzz Bento's decoders and parsers with libFuzzer on the stable toolchain
# (docs/fuzzing.md).
#
#   scripts/fuzz.sh [TARGET...] [--runs N] [--time SECONDS] [--light] [--seed]
#                   [-- LIBFUZZER_OPTION...]
#
# TARGET: frame, legacy, ipc, policy, manifest (default: all, one after the
# other). --runs N stops each target after N executions (default 10000000),
# --time S after S seconds (with both, whichever comes first). --light
# builds without the server and its tokio stack, so only frame, ipc, policy
# and manifest (the CI smoke run). --seed
# rewrites the seed corpus from the real encoders and exits. The build
# instruments only Bento's crates (fuzz/rustc-sancov); no cargo-fuzz and no
# nightly compiler needed. Crashes are written to fuzz/artifacts/TARGET/;
# new inputs to fuzz/work/TARGET/ (the repository's fuzz/corpus/TARGET/ stays
# as seeded unless you merge into it, see docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

all=(frame legacy ipc policy manifest)
light_targets=(frame ipc policy manifest)
targets=()
runs=10000000
time=
light=0
seed=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --time) time=$2; shift 2 ;;
    --light) light=1; shift ;;
    --seed) seed=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    if [ $light -eq 1 ]; then targets=("${light_targets[@]}"); else targets=("${all[@]}"); fi
fi
for t in "${targets[@]}"; do
    case " ${all[*]} " in *" $t "*) ;; *) echo "fuzz.sh: no target $t (have: ${all[*]})" >&2; exit 2 ;; esac
    if [ $light -eq 1 ]; then
        case " ${light_targets[*]} " in *" $t "*) ;; *) echo "fuzz.sh: $t needs the full build (drop --light)" >&2; exit 2 ;; esac
    fi
done

limit=("-runs=$runs")
[ -n "$time" ] && limit+=("-max_total_time=$time")
features=()
[ $light -eq 1 ] && features=(--no-default-features)
echo "== building fuzz targets"
start=$(date +%s)
# An explicit --target keeps host builds (proc macros, build scripts) apart
# from the instrumented target build (see fuzz/rustc-sancov).
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTC_WRAPPER="$repo/fuzz/rustc-sancov" \
    cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" --bins "${features[@]}"
echo "== built in $(($(date +%s) - start)) s"
bin=fuzz/target/$host/release

if [ $seed -eq 1 ]; then
    # Without the box crates (--light) only the light targets' seeds are made.
    for t in "${targets[@]}"; do rm -f "fuzz/corpus/$t"/seed-*; done
    "$bin/seed"
    echo "== wrote the seed corpus: $(ls fuzz/corpus/* | grep -c seed-) files"
    exit 0
fi

for t in "${targets[@]}"; do
    mkdir -p "fuzz/artifacts/$t" "fuzz/work/$t" "fuzz/corpus/$t"
    echo "== fuzzing $t (${limit[*]})"
    # The work directory comes first: libFuzzer adds what it finds there and
    # only reads the seeds.
    "$bin/$t" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" "${extra[@]}" "fuzz/work/$t" "fuzz/corpus/$t"
done
