//! The library's rooms depend only on rooms below them (the order `lib.rs` lists them in), so the
//! layout shows the architecture and no two rooms import each other.

use std::{fs, path::Path};

/// The rooms, lowest first: each may use those before it.
const ROOMS: [&str; 8] = ["label", "config", "reconcile", "dataplane", "host", "inspect", "bgp", "agent"];

/// The rooms a source text names after `crate::`: the first name of each path, or of each item
/// of a `crate::{...}` group.
fn rooms_used(text: &str) -> Vec<String> {
    let first_name =
        |path: &str| -> String { path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut used = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            used.push(first_name(rest));
            continue;
        };
        // The group's items: split at its own commas, not those of nested groups.
        let (mut depth, mut start) = (0, 0);
        for (at, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    used.push(first_name(&group[start..at]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    used.push(first_name(&group[start..at]));
                    start = at + 1;
                }
                _ => {}
            }
        }
    }
    used.retain(|r| ROOMS.contains(&r.as_str()));
    used
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn rooms_use_only_rooms_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for (rank, room) in ROOMS.iter().enumerate() {
        let mut sources = Vec::new();
        let folder = src.join(room);
        if folder.is_dir() {
            files(&folder, &mut sources);
        } else {
            sources.push(src.join(format!("{room}.rs")));
        }
        for file in sources {
            let text = fs::read_to_string(&file).expect("source file");
            for used in rooms_used(&text) {
                let used_rank = ROOMS.iter().position(|r| *r == used).expect("a room");
                if used_rank > rank {
                    problems.push(format!("{} uses crate::{used}, a room above {room}", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_parser_finds_grouped_and_plain_paths() {
    let text = "use crate::{\n    config::{A, label::B},\n    dataplane::host,\n};\nlet x = crate::agent::run();";
    assert_eq!(rooms_used(text), ["config", "dataplane", "agent"]);
}
