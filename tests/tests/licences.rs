//! Every crate of this workspace is Apache-2.0, and every dependency cargo resolves (for any
//! platform) can be used under a licence that allows that: its SPDX expression, evaluated with
//! the permissive licences below as "allowed", is satisfied. `docs/licences.md` lists them.

use std::collections::BTreeMap;
use std::process::Command;

/// Licences under which a dependency may be linked into an Apache-2.0 project and shipped.
/// MPL-2.0 is file-level copyleft: using an unmodified crate is allowed.
const ALLOWED: &[&str] = &[
    "Apache-2.0",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unlicense",
    "CC0-1.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "MPL-2.0",
    "BSL-1.0",
];

/// Whether an SPDX expression (`A OR B`, `A AND B`, `A WITH exception`, parentheses, and the old
/// `A/B` form for OR) is satisfied when the licences in `ALLOWED` are.
fn satisfied(expr: &str) -> Result<bool, String> {
    let spaced = expr.replace('/', " OR ").replace('(', " ( ").replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let v = or_expr(&tokens, &mut pos)?;
    match pos == tokens.len() {
        true => Ok(v),
        false => Err(format!("{expr:?}: unexpected {:?}", tokens[pos])),
    }
}

fn or_expr(t: &[&str], pos: &mut usize) -> Result<bool, String> {
    let mut v = and_expr(t, pos)?;
    while t.get(*pos) == Some(&"OR") {
        *pos += 1;
        v |= and_expr(t, pos)?;
    }
    Ok(v)
}

fn and_expr(t: &[&str], pos: &mut usize) -> Result<bool, String> {
    let mut v = term(t, pos)?;
    while t.get(*pos) == Some(&"AND") {
        *pos += 1;
        v &= term(t, pos)?;
    }
    Ok(v)
}

fn term(t: &[&str], pos: &mut usize) -> Result<bool, String> {
    let tok = *t.get(*pos).ok_or("expression ends early")?;
    *pos += 1;
    let v = match tok {
        "(" => {
            let v = or_expr(t, pos)?;
            if t.get(*pos) != Some(&")") {
                return Err("unbalanced parenthesis".into());
            }
            *pos += 1;
            v
        }
        id => ALLOWED.contains(&id.trim_end_matches('+')),
    };
    // An exception only widens what the licence allows (LLVM-exception, ...).
    if t.get(*pos) == Some(&"WITH") {
        *pos += 2;
    }
    Ok(v)
}

#[test]
fn the_expression_evaluator_reads_spdx() {
    assert!(satisfied("MIT OR Apache-2.0").unwrap());
    assert!(satisfied("(MIT OR Apache-2.0) AND Unicode-3.0").unwrap());
    assert!(satisfied("MIT/Apache-2.0").unwrap());
    assert!(satisfied("Apache-2.0 WITH LLVM-exception OR MIT").unwrap());
    assert!(!satisfied("GPL-3.0-only").unwrap());
    assert!(!satisfied("MIT AND GPL-2.0-only").unwrap());
    assert!(satisfied("GPL-2.0-only OR MIT").unwrap());
    assert!(satisfied("(MIT").is_err());
}

#[test]
fn the_workspace_is_apache_2_and_every_dependency_allows_it() {
    // What builds for the Linux target this project ships for: the other platforms' crates
    // (Android's, Windows') are never downloaded there, and `--offline` cannot resolve them.
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &target])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = m["workspace_members"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let mut by_licence: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused = Vec::new();
    let packages = m["packages"].as_array().unwrap();
    assert!(packages.len() > 100, "cargo resolved {} packages: not the whole graph?", packages.len());
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let licence = p["license"].as_str().unwrap_or("");
        if members.contains(&p["id"].as_str().unwrap()) {
            assert_eq!(licence, "Apache-2.0", "workspace crate {name}");
            continue;
        }
        *by_licence.entry(licence.to_owned()).or_default() += 1;
        match satisfied(licence) {
            Ok(true) => {}
            Ok(false) => refused.push(format!("{name} {}: {licence:?}", p["version"])),
            Err(e) => refused.push(format!("{name} {}: {e}", p["version"])),
        }
    }
    for (l, n) in &by_licence {
        println!("{n:4} {l}");
    }
    assert!(refused.is_empty(), "dependencies whose licence does not allow Apache-2.0 use: {refused:#?}");
}
