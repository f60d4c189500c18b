//! Inputs the `pipeline` fuzz target keeps in `fuzz/regressions/pipeline/`
//! (crashes once found, and the 5,000-deep inputs of issue 14), each fed to
//! the same function the target calls, on the same 2 MiB stack a tokio
//! thread gives the server: each must get a clean list of errors, never a
//! panic or a stack overflow.
//!
//! Inputs that still crash would wait in `fuzz/regressions/pending/`; the fix
//! moves them here.

use std::path::Path;

use valkyrie_pipeline::parse;

/// Tokio's default thread stack, where the server parses pipelines.
const SERVER_STACK_BYTES: usize = 2 << 20;

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn saved_pipeline_inputs_get_clean_errors() {
    let inputs = regressions("pipeline");
    assert!(!inputs.is_empty(), "fuzz/regressions/pipeline/ is empty");
    for (name, bytes) in inputs {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let file = name.clone();
        let result = std::thread::Builder::new()
            .stack_size(SERVER_STACK_BYTES)
            .spawn(move || parse(&file, &text))
            .unwrap()
            .join()
            .unwrap_or_else(|_| panic!("{name}: the parser panicked"));
        let errors = result.expect_err(&name).0;
        assert!(!errors.is_empty(), "{name}: an empty error list");
        for e in &errors {
            assert_eq!(e.file, name);
            assert!(e.line >= 1 && e.column >= 1, "{name}: {e}");
        }
    }
}
