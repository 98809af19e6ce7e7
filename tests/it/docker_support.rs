//! Docker fixtures: the test image (built from the gantry binary itself, no registry needed),
//! compose projects and containers that clean up after themselves.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Runs a command; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// `gantry-test:it`: the gantry binary under test and the shared libraries it needs, imported
/// as an image whose entrypoint is `gantry backend`. Built once per test run.
pub fn test_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let bin = env!("CARGO_BIN_EXE_gantry");
        let root = tempfile::tempdir().unwrap();
        let copy = |from: &Path, to: &Path| {
            let dest = root.path().join(to.strip_prefix("/").unwrap_or(to));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(from, &dest).unwrap();
        };
        copy(Path::new(bin), Path::new("/gantry"));
        // Debug info is not needed inside the image; stripping makes the import ten times faster.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(root.path().join("gantry"))
            .output();
        for line in run(Command::new("ldd").arg(bin)).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line
                .split("=>")
                .last()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                copy(Path::new(path), Path::new(path));
            }
        }
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        // A shell for `docker run --health-cmd`, which runs its command with /bin/sh -c
        // (Debian's busybox-static, installed by .ci/run).
        copy(Path::new("/bin/busybox"), Path::new("/bin/sh"));
        let tar = root.path().join("image.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .arg("--exclude=image.tar")
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let id_of = || {
            Command::new("docker")
                .args(["image", "inspect", "-f", "{{.Id}}", "gantry-test:it"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let previous = id_of();
        run(Command::new("docker").args([
            "import",
            "-c",
            "ENTRYPOINT [\"/gantry\", \"backend\"]",
            "-c",
            "ENV PORT=80",
            tar.to_str().unwrap(),
            "gantry-test:it",
        ]));
        // The image of an earlier run lost its tag to this one: remove it rather than leave it
        // dangling (a failure only means something still uses it).
        if let Some(old) = previous.filter(|old| Some(old) != id_of().as_ref()) {
            let _ = Command::new("docker").args(["rmi", &old]).output();
        }
        "gantry-test:it".to_string()
    })
}

/// A unique name for this test's Docker objects.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", fastrand::u32(..) % 1_000_000)
}

/// Removes containers and networks it was told about when dropped.
#[derive(Default)]
pub struct Cleanup {
    pub containers: BTreeSet<String>,
    pub networks: BTreeSet<String>,
    pub projects: Vec<(String, String)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (project, file) in &self.projects {
            let _ = Command::new("docker-compose")
                .args(["-p", project, "-f", file, "down", "-t", "1", "--remove-orphans"])
                .output();
        }
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}

/// A compose project from a file, with environment variables for interpolation.
pub struct Compose {
    pub project: String,
    pub file: String,
    pub env: Vec<(String, String)>,
}

impl Compose {
    pub fn new(file: &str, env: &[(&str, &str)], cleanup: &mut Cleanup) -> Self {
        let project = unique("gt");
        let file = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        cleanup.projects.push((project.clone(), file.clone()));
        Compose {
            project,
            file,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    pub fn run(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.project, "-f", &self.file]).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    /// IDs of the project's running containers of a compose service.
    pub fn ids(&self, service: &str) -> BTreeSet<String> {
        self.run(&["ps", "-q", service])
            .lines()
            .map(|l| l[..12].to_string())
            .collect()
    }
}
