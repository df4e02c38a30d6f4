//! Document splitting, the line index and `manifest::load` on arbitrary text:
//! never a panic, splitting copies nothing and covers the input in order, every
//! finding points at a line of its file, and small limits are enforced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewave::manifest::lines::{LineIndex, split_documents};
use nodewave::manifest::{Limits, LoadOptions, ManifestFile, load};

/// Lines as YAML counts them: `\n`, `\r\n` and a lone `\r` all break a line.
fn yaml_lines(text: &str) -> usize {
    let b = text.as_bytes();
    let breaks = (0..b.len())
        .filter(|&i| b[i] == b'\n' || (b[i] == b'\r' && b.get(i + 1) != Some(&b'\n')))
        .count();
    breaks + 1
}

fuzz_target!(|data: &str| {
    let file_lines = yaml_lines(data);
    let small = Limits {
        max_depth: 8,
        max_nodes: 200,
        max_aliases: 8,
        max_objects: 20,
        max_total_nodes: 1_000,
        max_object_bytes: 4_096,
        ..Limits::default()
    };

    let mut previous_end = 0usize;
    let mut previous_line = 0usize;
    for doc in split_documents(data) {
        // Each document is a slice of the input, after the previous one.
        let start = doc.text.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start >= previous_end, "documents overlap");
        assert!(doc.first_line > previous_line, "lines go backwards");
        assert!(!doc.text.is_empty());
        previous_end = start + doc.text.len();
        previous_line = doc.first_line;
        let last_line = doc.first_line + yaml_lines(doc.text);
        if let Ok(index) = LineIndex::build(&doc, &small) {
            if let Some(root) = index.root_line() {
                assert!(root >= doc.first_line && root <= last_line, "{root}");
            }
        }
    }
    assert!(previous_end <= data.len());

    // Small limits reach every limit path with short inputs; the defaults are what
    // production runs. One of the two per input (by length) halves the cost.
    let limits = if data.len() % 2 == 0 {
        small
    } else {
        Limits::default()
    };
    let files = [ManifestFile {
        path: "f.yaml".into(),
        contents: data.to_string(),
    }];
    let opts = LoadOptions {
        limits,
        ..LoadOptions::default()
    };
    if let Err(rejected) = load(&files, &opts) {
        assert!(!rejected.errors.is_empty());
        for f in rejected.errors.iter().chain(&rejected.warnings) {
            assert_eq!(f.location.file, "f.yaml");
            if let Some(line) = f.location.line {
                assert!(line >= 1 && line <= file_lines + 1, "{f}");
            }
        }
    }
});
