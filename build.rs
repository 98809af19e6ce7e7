//! Puts the commit Gantry was built from into the binary (`gantry --version`), or "unknown"
//! outside a git checkout (a source tarball, `cargo install` from a copy).

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GANTRY_COMMIT={commit}");
    // Again when HEAD moves: HEAD itself (a checkout) and the branch it points to (a commit).
    // Paths that do not exist are not named, or cargo would run this on every build.
    let head = Path::new(".git/HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(text) = std::fs::read_to_string(head)
            && let Some(r) = text.strip_prefix("ref: ")
        {
            let branch = Path::new(".git").join(r.trim());
            if branch.exists() {
                println!("cargo:rerun-if-changed={}", branch.display());
            }
        }
        if Path::new(".git/packed-refs").exists() {
            println!("cargo:rerun-if-changed=.git/packed-refs");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
