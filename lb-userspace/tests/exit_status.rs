//! `lb`'s exit statuses, as `lb --help` lists them: 0 done, 1 refused, invalid or failed,
//! 2 usage, 3 the agent could not be reached.

use std::process::Command;

fn status(args: &[&str]) -> Option<i32> {
    Command::new(env!("CARGO_BIN_EXE_lb")).args(args).output().expect("running lb").status.code()
}

#[test]
fn exit_statuses_say_what_went_wrong() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab.toml");
    assert_eq!(status(&["check", config]), Some(0));
    assert_eq!(status(&["check", "/nonexistent/lb.toml"]), Some(1), "an unreadable configuration");
    assert_eq!(status(&["no-such-subcommand"]), Some(2), "usage");
    let nobody = std::env::temp_dir().join(format!("lb-exit-status-{}.sock", std::process::id()));
    let socket = nobody.to_str().expect("path");
    assert_eq!(status(&["status", "--instance", "x", "--socket", socket]), Some(3), "no agent listens");
    assert_eq!(status(&["backend", "drain", "--instance", "x", "--socket", socket, "web", "198.18.0.21"]), Some(3));
}
