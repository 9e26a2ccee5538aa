# Sourced by the scripts that build kinglet, so that it comes out as one static executable
# (glibc and libseccomp linked in, at a fixed address) for this machine's architecture:
# `cargo build --target "$KINGLET_TARGET"` then leaves it in target/$KINGLET_TARGET/<profile>/.
#
# Static linking needs cargo's explicit --target: the flags then reach only what is built for
# the target, not build scripts and proc macros (which rustc can only build as shared objects).
KINGLET_TARGET=$(rustc -vV | sed -n 's/^host: //p')
export KINGLET_TARGET
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static"
# The functions of the container start path go first in the binary, together, in the order of
# scripts/start-path.order (made by scripts/order-start-path on x86_64, where rustc links with
# its own lld; other linkers lack the flag). The path is relative: cargo runs the linker in the
# repository root, so the flags, which symbol names depend on, are the same in every checkout.
if [ "$KINGLET_TARGET" = x86_64-unknown-linux-gnu ]; then
  RUSTFLAGS="$RUSTFLAGS -C link-arg=-Wl,--symbol-ordering-file=scripts/start-path.order"
  RUSTFLAGS="$RUSTFLAGS -C link-arg=-Wl,--no-warn-symbol-ordering"
fi
export LIBSECCOMP_LINK_TYPE=static
# rustc looks for static libraries only where it is told; ask the C compiler where it is.
LIBSECCOMP_LIB_PATH=$(dirname "$(cc -print-file-name=libseccomp.a)")
export LIBSECCOMP_LIB_PATH
