//! Cheap checks that keep the tree honest: the docs name every crate, no placeholder macros
//! (todo, unimplemented) in the code, no test switched off with an ignore attribute.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_docs_name_every_crate() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let architecture = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not name {name}"
        );
        assert!(
            architecture.contains(&name),
            "docs/ARCHITECTURE.md does not name {name}"
        );
    }
}

#[test]
fn no_placeholders_and_no_switched_off_tests() {
    let mut files = Vec::new();
    for dir in ["crates", "tests", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    // Spelled in two halves so that this file does not match itself.
    let needles = [
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
        concat!("#[", "ignore"),
    ];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Doc examples may stub what they do not show.
        let code = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"));
        for line in code {
            for needle in needles {
                assert!(
                    !line.contains(needle),
                    "{} contains {needle}",
                    file.display()
                );
            }
        }
    }
}
