//! Keeps the documentation in step with the code: every setting and every RPC is
//! documented, and every link between the README and `docs/` leads somewhere.

use csai_sidecar::config::catalog;
use std::path::Path;

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const API: &str = include_str!("../../docs/api.md");
const PROTOS: [&str; 2] = [
    include_str!("../../proto/csai/v1/session_store.proto"),
    include_str!("../../proto/csai/v1/chat.proto"),
];

#[test]
fn the_configuration_chapter_documents_every_setting() {
    for key in catalog() {
        let flag = key
            .flag()
            .map_or_else(|| "(environment only)".to_string(), |f| format!("`--{f}`"));
        let row = format!("| `{}` | `{}` | {flag} |", key.name, key.env);
        assert!(
            CONFIGURATION.contains(&row),
            "docs/configuration.md lacks the row {row}"
        );
    }
}

#[test]
fn the_api_chapter_documents_every_rpc() {
    for proto in PROTOS {
        for line in proto.lines() {
            let Some(rest) = line.trim().strip_prefix("rpc ") else {
                continue;
            };
            let name = rest.split('(').next().unwrap_or_default().trim();
            assert!(
                API.contains(&format!(".{name}`")),
                "docs/api.md lacks RPC {name}"
            );
        }
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.push(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// Relative link targets of a Markdown text (outside code blocks).
fn links(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        for part in line.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            if !target.starts_with("http") {
                found.push(target.to_string());
            }
        }
    }
    found
}

#[test]
fn every_link_of_the_readme_and_docs_leads_to_a_file_and_heading() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        pages.push(entry.expect("entry").path());
    }
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        for target in links(&text) {
            let (file, heading) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            assert!(
                linked.exists(),
                "{}: link to {target}: no such file",
                page.display()
            );
            if !heading.is_empty() {
                let linked_text = std::fs::read_to_string(&linked).expect("linked page");
                assert!(
                    anchors(&linked_text).iter().any(|a| a == heading),
                    "{}: link to {target}: no such heading",
                    page.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links found");
}
