//! Stamps the build with the commit it was built from (`flotilla_build_info`).

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // A new commit or checkout moves HEAD's log; rebuild the stamp then.
    for watched in [".git/logs/HEAD", ".git/HEAD"] {
        let path = root.join(watched);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-env-changed=FLOTILLA_BUILD_COMMIT");
    let commit = std::env::var("FLOTILLA_BUILD_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&root)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    if let Some(c) = commit.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=FLOTILLA_BUILD_COMMIT={c}");
    }
}
