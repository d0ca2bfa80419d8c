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

#[test]
fn readme_lists_the_senders_exit_statuses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("reading README.md");
    let list = ferry::job::errors::exit_statuses_markdown();
    assert!(
        readme.contains(&list),
        "README.md's exit statuses of `ferry send` are stale; they are:\n{list}"
    );
}
