# Sourced by hack/image.sh, hack/bench-scale.sh and hack/chaos.sh: the release
# build of nodewave the three share. Symbols are stripped, as the image ships
# the binary (they are about a third of it): the benchmarks and the chaos run
# measure what users run, and none of the three rebuilds after another.
# A CARGO_PROFILE_RELEASE_STRIP set by the caller wins (perf wants symbols).
# Defines: cargo_release [CARGO BUILD ARGS...].

cargo_release() {
  CARGO_PROFILE_RELEASE_STRIP="${CARGO_PROFILE_RELEASE_STRIP:-symbols}" cargo build --release "$@"
}
