# Sourced by the scripts that build kinglet, so that it comes out as one static executable
# (glibc and libseccomp linked in, at a fixed address) for this machine's architecture:
# `cargo build --target "$KINGLET_TARGET"` then leaves it in target/$KINGLET_TARGET/<profile>/.
#
# Static linking needs cargo's explicit --target: the flags then reach only what is built for
# the target, not build scripts and proc macros (which rustc can only build as shared objects).
KINGLET_TARGET=$(rustc -vV | sed -n 's/^host: //p')
export KINGLET_TARGET
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static"
export LIBSECCOMP_LINK_TYPE=static
# rustc looks for static libraries only where it is told; ask the C compiler where it is.
LIBSECCOMP_LIB_PATH=$(dirname "$(cc -print-file-name=libseccomp.a)")
export LIBSECCOMP_LIB_PATH
