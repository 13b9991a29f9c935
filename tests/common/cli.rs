//! Running the built binary as a person would (shared by the CLI tests).

use std::path::PathBuf;
use std::process::Command;

/// `nextflow ARGS` on the CPU: (exit code, stdout, stderr).
pub fn nextflow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nextflow")).args(args).env("NEXTFLOW_DEVICE", "cpu").output().expect("the binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A fresh, empty folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nextflow-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
