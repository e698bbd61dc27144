//! The files in crds/ must be exactly what `latchkey crd` prints.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, crd) in latchkey::crd::all() {
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; run `latchkey crd > crds/{file}`",
                path.display()
            )
        });
        assert!(
            committed == latchkey::crd::to_yaml(&crd),
            "{} is out of date: regenerate it with `cargo run -- crd > crds/{file}`",
            path.display()
        );
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        files,
        latchkey::crd::all().len(),
        "crds/ holds a file latchkey does not generate"
    );
}

#[test]
fn binary_prints_the_same_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    for (file, _) in latchkey::crd::all() {
        let committed = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("crds")
                .join(file),
        )
        .unwrap();
        assert!(
            printed.contains(&committed),
            "`latchkey crd` output differs from crds/{file}"
        );
    }
}
