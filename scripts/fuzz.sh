#!/usr/bin/env bash
# Mutation fuzzing of every parser of untrusted bytes (tests/fuzz.rs; see
# docs/FUZZING.md).
#
#   scripts/fuzz.sh            10,000 inputs per parser (what CI runs)
#   scripts/fuzz.sh --long     1,000,000 per parser, the workspace built with
#                              opt-level 2 (overflow checks stay on)
#   scripts/fuzz.sh --iters N  N per parser
#
# WANRT_FUZZ_SEED=<u64> changes the random stream; FUZZ_THREADS (default 2)
# how many parsers run at once. A panic saves the input under
# target/tmp/fuzz-failures/ and fails the run.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

iters=10000
case "${1:-}" in
  --long)
    iters=1000000
    # Only the workspace crates change profile: dependencies are built at
    # opt-level 2 already ([profile.dev.package."*"]).
    export CARGO_PROFILE_DEV_OPT_LEVEL=2
    ;;
  --iters) iters="$2" ;;
  "") ;;
  *) echo "usage: scripts/fuzz.sh [--long | --iters N]" >&2; exit 2 ;;
esac

start=$(date +%s)
WANRT_FUZZ_ITERS="$iters" cargo test --test fuzz -- --nocapture \
  --test-threads="${FUZZ_THREADS:-2}"
echo "== fuzz: $iters inputs per parser in $(( $(date +%s) - start )) s" >&2
