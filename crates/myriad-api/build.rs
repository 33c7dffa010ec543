//! Rebuilds the crate when a file of the embedded web console changes
//! (`include_dir!` alone does not tell Cargo).

fn main() {
    println!("cargo:rerun-if-changed=console");
}
