//! `lb`'s exit statuses, as `lb --help` lists them: 0 done, 1 refused, invalid or failed,
//! 2 usage, 3 the agent could not be reached.

use std::process::Command;

fn status(args: &[&str]) -> Option<i32> {
    Command::new(env!("CARGO_BIN_EXE_lb")).args(args).output().expect("running lb").status.code()
}

#[test]
fn check_reports_problems_as_json() {
    let file = std::env::temp_dir().join(format!("lb-check-json-{}.toml", std::process::id()));
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab.toml"))
        .expect("the lab's configuration")
        .replacen("mtu = ", "mtu = 70000 #", 1);
    std::fs::write(&file, text).expect("a temporary file");
    let out = Command::new(env!("CARGO_BIN_EXE_lb")).args(["check", "--json"]).arg(&file).output().expect("running lb");
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let report: lb_userspace::config::CheckReport = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert!(!report.valid);
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].field, "instance.mtu");
    assert!(report.problems[0].line > 1 && report.problems[0].message.contains("out of range"), "{report:?}");

    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_lb")).args(["check", "--json", lab]).output().expect("running lb");
    let report: lb_userspace::config::CheckReport = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert!(report.valid && report.vips > 0 && report.backends > 0 && report.problems.is_empty(), "{report:?}");
}

#[test]
fn exit_statuses_say_what_went_wrong() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab.toml");
    assert_eq!(status(&["check", config]), Some(0));
    assert_eq!(status(&["check", "/nonexistent/lb.toml"]), Some(1), "an unreadable configuration");
    assert_eq!(status(&["check", "--json", "/nonexistent/lb.toml"]), Some(1), "the same status with --json");
    assert_eq!(status(&["no-such-subcommand"]), Some(2), "usage");
    let nobody = std::env::temp_dir().join(format!("lb-exit-status-{}.sock", std::process::id()));
    let socket = nobody.to_str().expect("path");
    assert_eq!(status(&["status", "--instance", "x", "--socket", socket]), Some(3), "no agent listens");
    assert_eq!(status(&["backend", "drain", "--instance", "x", "--socket", socket, "web", "198.18.0.21"]), Some(3));
}
