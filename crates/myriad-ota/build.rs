//! Compiles `proto/manifest.proto` with protox (pure Rust) and prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/manifest.proto");
    let fds = protox::compile(["manifest.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
