# Sourced by the scripts that build kinglet, so that it comes out as one static executable
# (glibc and libseccomp linked in, at a fixed address) for this machine's architecture:
# `cargo build --target "$KINGLET_TARGET"` then leaves it in target/$KINGLET_TARGET/<profile>/.
# With KINGLET_CROSS_TARGET set to another architecture's target (packaging/release), it is
# built for that one instead, linked by Debian's cross gcc against that architecture's
# multiarch libseccomp.a.
#
# Static linking needs cargo's explicit --target: the flags then reach only what is built for
# the target, not build scripts and proc macros (which rustc can only build as shared objects).
KINGLET_TARGET=$(rustc -vV | sed -n 's/^host: //p')
kinglet_cc=cc
if [ -n "${KINGLET_CROSS_TARGET:-}" ] && [ "$KINGLET_CROSS_TARGET" != "$KINGLET_TARGET" ]; then
  KINGLET_TARGET=$KINGLET_CROSS_TARGET
  case $KINGLET_TARGET in
    aarch64-unknown-linux-gnu) kinglet_cc=aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf) kinglet_cc=arm-linux-gnueabihf-gcc ;;
    *) echo "scripts/static.sh: no cross linker known for $KINGLET_TARGET" >&2; return 1 ;;
  esac
  # cargo's linker for the target, and the cc crate's compiler for C dependencies (ring, sqlite).
  export "CARGO_TARGET_$(echo "$KINGLET_TARGET" | tr 'a-z-' 'A-Z_')_LINKER=$kinglet_cc"
  export "CC_$(echo "$KINGLET_TARGET" | tr '-' '_')=$kinglet_cc"
fi
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
# 32-bit ARM: Thumb branches reach 16 MB, less than kinglet's text, and a branch further away
# goes through a veneer that may clobber ip. glibc's syscall wrappers pass the number in ip to
# __libc_do_syscall, so its functions must stay together: they go first (lld's ordering file;
# the list is libc.a's functions). lld, rustc's own, through the cross gcc; GNU ld 2.40 also
# drops the Thumb bit of glibc's memcpy/memchr resolvers in a binary this large.
if [ "$KINGLET_TARGET" = armv7-unknown-linux-gnueabihf ]; then
  kinglet_order="${CARGO_TARGET_DIR:-$PWD/target}/$KINGLET_TARGET/libc.order"
  mkdir -p "$(dirname "$kinglet_order")"
  "${kinglet_cc%gcc}nm" --defined-only "$($kinglet_cc -print-file-name=libc.a)" 2>/dev/null |
    awk '$2 ~ /^[tTwW]$/ { print $3 }' >"$kinglet_order"
  RUSTFLAGS="$RUSTFLAGS -C link-arg=-fuse-ld=lld"
  RUSTFLAGS="$RUSTFLAGS -C link-arg=-B$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
  RUSTFLAGS="$RUSTFLAGS -C link-arg=-Wl,--symbol-ordering-file=$kinglet_order"
  RUSTFLAGS="$RUSTFLAGS -C link-arg=-Wl,--no-warn-symbol-ordering"
  unset kinglet_order
fi
export LIBSECCOMP_LINK_TYPE=static
# rustc looks for static libraries only where it is told; ask the C compiler where it is.
LIBSECCOMP_LIB_PATH=$(dirname "$($kinglet_cc -print-file-name=libseccomp.a)")
export LIBSECCOMP_LIB_PATH
unset kinglet_cc
