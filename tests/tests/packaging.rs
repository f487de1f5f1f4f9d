//! The published crates are complete: every file a crate reads at build time is inside its
//! package.
//!
//! For each of `outbox-macros`, `outbox` and `inbox` this runs `cargo package --list` (which
//! lists the files `cargo package` would put in the tarball, without building anything) and
//! checks that every path named by `include_str!` / `include_bytes!` in the crate's sources
//! (`#[doc = include_str!(..)]` included) resolves inside the crate's directory and is in the
//! list. A file read from `../../../somewhere` builds in the repository but not from the
//! published tarball: this test fails on it with the file and line. For `outbox` and `inbox` it
//! also checks that every migration of the crate (`migrations/{postgres,sqlite}/*/{up,down}.sql`)
//! is packaged and embedded, and that the repository's top-level `migrations/` (one ordered folder
//! for diesel CLI) links every version folder of both crates and nothing else, so they cannot
//! drift apart.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The cargo that runs the tests (cargo and nextest set `CARGO`), else the one that built them.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string())
}

/// `cargo package --list -p <package>`: the files of the tarball, relative to the crate dir.
fn package_list(package: &str) -> BTreeSet<String> {
    let out = Command::new(cargo())
        .current_dir(workspace())
        .args(["package", "--list", "--allow-dirty", "--offline", "-p", package])
        .output()
        .expect("run cargo package --list");
    assert!(
        out.status.success(),
        "cargo package --list -p {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the list is UTF-8").lines().map(str::to_string).collect()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// A path with `.` and `..` resolved lexically (no symlinks followed, like the compiler's
/// relative include paths).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// One `include_str!` / `include_bytes!` found in a source file.
struct Include {
    /// `file:line` of the macro call.
    at: String,
    /// The macro call as written (for messages).
    text: String,
    /// The path it reads, absolute and normalized; `None` when the argument is not a form this
    /// test understands (then the test fails and asks to be extended, rather than pass blind).
    target: Option<PathBuf>,
}

/// Reads the string literal at the start of `s` (after whitespace): its contents.
fn string_literal(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('"')?;
    s.find('"').map(|end| &s[..end])
}

/// The `include_str!` / `include_bytes!` calls of `file` (lines that are comments skipped).
fn includes(crate_dir: &Path, file: &Path) -> Vec<Include> {
    let source = std::fs::read_to_string(file).expect("read a source file");
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for mac in ["include_str!", "include_bytes!"] {
            for (i, _) in line.match_indices(mac) {
                let rest = line[i + mac.len()..].trim_start();
                let Some(arg) = rest.strip_prefix('(') else { continue };
                let arg = arg.trim_start();
                let target = if let Some(lit) = string_literal(arg) {
                    // Relative to the file that contains the call.
                    Some(normalize(&file.parent().expect("a file has a directory").join(lit)))
                } else if let Some(after) = arg.strip_prefix(r#"concat!(env!("CARGO_MANIFEST_DIR"),"#) {
                    string_literal(after).map(|lit| normalize(&crate_dir.join(lit.trim_start_matches('/'))))
                } else {
                    None
                };
                found.push(Include {
                    at: format!("{}:{}", file.display(), n + 1),
                    text: line[i..].trim_end().to_string(),
                    target,
                });
            }
        }
    }
    found
}

/// Checks one crate; returns what it found, for the printed summary.
fn check_crate(package: &str, dir: &str) -> (BTreeSet<String>, usize) {
    let crate_dir = workspace().join(dir);
    let listed = package_list(package);
    let mut problems = Vec::new();

    let mut sources = Vec::new();
    for sub in ["src", "tests", "examples", "benches"] {
        rust_files(&crate_dir.join(sub), &mut sources);
    }
    if crate_dir.join("build.rs").is_file() {
        sources.push(crate_dir.join("build.rs"));
    }
    let mut count = 0;
    for file in &sources {
        let rel = file.strip_prefix(&crate_dir).expect("under the crate dir");
        let rel = rel.to_string_lossy().replace('\\', "/");
        if rel.starts_with("src/") && !listed.contains(&rel) {
            problems.push(format!("{dir}/{rel} is a source file but not in the package"));
        }
        if !listed.contains(&rel) {
            continue; // not shipped (e.g. excluded tests): its includes are not needed from the tarball
        }
        for inc in includes(&crate_dir, file) {
            count += 1;
            let Some(target) = inc.target else {
                problems.push(format!("{}: `{}`: argument not understood by this test", inc.at, inc.text));
                continue;
            };
            let Ok(inside) = target.strip_prefix(&crate_dir) else {
                problems.push(format!(
                    "{}: `{}` reads {}, outside the package directory {dir}/ (cargo package leaves it out)",
                    inc.at,
                    inc.text,
                    target.display()
                ));
                continue;
            };
            let inside = inside.to_string_lossy().replace('\\', "/");
            if !target.is_file() {
                problems.push(format!("{}: `{}` reads {dir}/{inside}, which does not exist", inc.at, inc.text));
            } else if !listed.contains(&inside) {
                problems.push(format!(
                    "{}: `{}` reads {dir}/{inside}, which `cargo package --list -p {package}` does not list",
                    inc.at, inc.text
                ));
            }
        }
    }
    assert!(problems.is_empty(), "package {package} is incomplete:\n  {}", problems.join("\n  "));
    (listed, count)
}

#[test]
fn outbox_macros_package_has_every_file_it_reads() {
    let (listed, includes) = check_crate("outbox-macros", "macros");
    println!("outbox-macros: {} files packaged, {includes} include_str!/include_bytes! checked", listed.len());
}

#[test]
fn inbox_package_has_every_file_it_reads_and_every_migration() {
    let (listed, includes) = check_crate("inbox", "inbox");
    println!("inbox: {} files packaged, {includes} include_str!/include_bytes! checked", listed.len());
    assert!(listed.contains("README.md"), "inbox/README.md (the crate README) is not packaged");
    check_migrations("inbox", &listed, [inbox::POSTGRES_MIGRATIONS, inbox::SQLITE_MIGRATIONS]);
}

#[test]
fn outbox_package_has_every_file_it_reads_and_every_migration() {
    let (listed, includes) = check_crate("outbox", "outbox");
    println!("outbox: {} files packaged, {includes} include_str!/include_bytes! checked", listed.len());
    assert!(listed.contains("README.md"), "outbox/README.md (the crate README) is not packaged");
    check_migrations("outbox", &listed, [outbox::POSTGRES_MIGRATIONS, outbox::SQLITE_MIGRATIONS]);
}

/// The version folders of `dir/migrations/{backend}`, sorted.
fn version_dirs(dir: &Path, backend: &str) -> Vec<String> {
    let dir = dir.join("migrations").join(backend);
    let mut versions: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} (the migrations) cannot be read: {e}", dir.display()))
        .map(|e| e.expect("read a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions
}

/// Every migration folder of `krate` is packaged (up and down) and is the crate's embedded set
/// for its backend (`[postgres, sqlite]`), in order.
fn check_migrations(krate: &str, listed: &BTreeSet<String>, embedded: [&[(&str, &str)]; 2]) {
    let root = workspace().join(krate);
    for (backend, embedded) in ["postgres", "sqlite"].into_iter().zip(embedded) {
        let versions = version_dirs(&root, backend);
        assert!(!versions.is_empty(), "no {backend} migration found in {krate}/migrations/{backend}");
        for version in &versions {
            for file in ["up.sql", "down.sql"] {
                let rel = format!("migrations/{backend}/{version}/{file}");
                assert!(listed.contains(&rel), "{krate}/{rel} is not in the {krate} package");
                println!("  packaged {krate}/{rel}");
            }
        }
        let names: Vec<&str> = embedded.iter().map(|(v, _)| *v).collect();
        assert_eq!(names, versions, "{krate}'s embedded {backend} migrations are not its folders");
    }
}

/// The repository's top-level migrations/ (for diesel CLI users and the docs) is one ordered
/// folder per backend of relative symlinks, one per version folder of the two crates, so it is
/// the packaged folders themselves, not a copy that could drift.
#[test]
fn top_level_migrations_link_every_crate_migration() {
    let root = workspace();
    for backend in ["postgres", "sqlite"] {
        let top = root.join("migrations").join(backend);
        let mut expected: Vec<(String, PathBuf)> = Vec::new();
        for krate in ["outbox", "inbox"] {
            for v in version_dirs(&root.join(krate), backend) {
                let target = root.join(krate).join("migrations").join(backend).join(&v);
                expected.push((v, std::fs::canonicalize(&target).expect("a version folder exists")));
            }
        }
        expected.sort();
        let names: BTreeSet<&String> = expected.iter().map(|(v, _)| v).collect();
        assert_eq!(names.len(), expected.len(), "a {backend} version is in both crates: {expected:?}");
        let found = version_dirs(&root, backend);
        assert_eq!(found, expected.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(), "{}", top.display());
        for (version, target) in &expected {
            let link = top.join(version);
            let to = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{} is not a symlink: {e}", link.display()));
            assert!(to.is_relative(), "{} links to an absolute path {}", link.display(), to.display());
            let real = std::fs::canonicalize(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
            assert_eq!(&real, target, "{} links elsewhere", link.display());
        }
        println!("migrations/{backend}: {} versions linked", expected.len());
    }
}
