// The kinglet binary is linked as a fixed-address (non-PIE) executable: it then needs no
// start-up relocations, so every container supervisor (the same binary, re-executed) starts
// sooner and keeps its relocated data shared instead of private (docs/BENCHMARKS.md).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
