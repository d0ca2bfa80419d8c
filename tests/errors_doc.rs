//! docs/errors.md is the catalogue as `ferry errors --markdown` prints it.

#[test]
fn errors_doc_is_up_to_date() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/errors.md"))
        .expect("reading docs/errors.md");
    assert!(
        doc == ferry::job::errors::catalogue_markdown(),
        "docs/errors.md is stale: regenerate it with `cargo run -- errors --markdown > docs/errors.md`"
    );
}
